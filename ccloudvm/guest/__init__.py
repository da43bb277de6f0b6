"""What is handed to a guest at first boot: the cloud-init seed, SSH keys, proxy settings."""
