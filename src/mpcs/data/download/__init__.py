"""``mpcs download``: fetch, check, unpack and verify the data sets."""
