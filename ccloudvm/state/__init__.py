"""What ccloudvm keeps on disk: the state directory's layout and each instance's record."""
