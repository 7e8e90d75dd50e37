"""The end-to-end demo on loopback, and its report."""
