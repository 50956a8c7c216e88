"""Test-wide fixtures. Tests import the fakes as ``tests.fakes``; pytest runs with rootdir on sys.path."""
