from ccloudvm.cli.main import main

main()
