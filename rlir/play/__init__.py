"""`rlir play`: drive a world model from a browser, one generated frame per key press."""
