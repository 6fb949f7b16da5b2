"""The raftflow command line: client verbs over gRPC and `raftflow node`.

Installed with raftflow (`pip install raftflow`). The development harnesses (local
clusters, the sshd stand-in, bench, chaos) live in tools/raftflow_dev and are not.
"""

import os

# gRPC's C core logs INFO lines of its own on stderr (a failed TLS handshake prints one
# before our error that says what to do): keep its errors only, unless the user asks for
# more with GRPC_VERBOSITY. Set before any module of this package imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
