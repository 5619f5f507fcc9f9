"""faketart: a Linux test double of the `tart` CLI with real SSH guests (docs/fake-tart.md)."""
