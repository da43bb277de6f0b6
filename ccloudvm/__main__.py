from ccloudvm.cli import main

main()
