"""What the connectivity tests of the three protocols share (stages, TLS, chain fetch)
and the parsed ``flowrt test`` target."""
