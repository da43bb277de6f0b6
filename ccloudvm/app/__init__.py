"""The use cases the commands run: create (resolve, boot, provision), image builds, host setup."""
