"""The cluster network in a VM or on bare metal, and the journal that undoes host changes."""
