"""The local stack as processes: the harness the demo and the tests start servers with, and the demo."""
