"""Pure shared kernel: resource models and codecs, errors, identity. No network or disk I/O lives here."""
