"""The deterministic fleet simulator (``make sim``): the real decision code on a virtual clock."""
