"""The foblab token wire protocol, version 1: sans-I/O framing, codec and connections."""
