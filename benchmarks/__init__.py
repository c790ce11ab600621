"""The benchmarks behind ``cycada bench NAME`` (the latency sweep itself is a client command)."""
