"""Stand-ins for things outside scoregate: real HTTP servers on 127.0.0.1."""
