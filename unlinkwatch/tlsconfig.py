"""TLS for gRPC, shared by the collector (server side) and the agent and query clients (client side).

Server: --tls-cert/--tls-key turn TLS on; adding --tls-ca requires and verifies client certificates (mTLS)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from unlinkwatch.errors import UserError

MAX_MESSAGE_BYTES = 32 << 20


def _read(path: str | None, flag: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{flag}: cannot read {path}: {e.strerror}") from None


def server_credentials(cert: str | None, key: str | None, ca: str | None) -> grpc.ServerCredentials | None:
    if not cert and not key and not ca:
        return None
    if not cert or not key:
        raise UserError("--tls-cert and --tls-key go together (and --tls-ca needs both)")
    cert_pem, key_pem = _read(cert, "--tls-cert"), _read(key, "--tls-key")
    assert cert_pem is not None and key_pem is not None
    ca_pem = _read(ca, "--tls-ca")
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                       require_client_auth=ca_pem is not None)


def channel(addr: str, cert: str | None = None, key: str | None = None, ca: str | None = None,
            server_name: str | None = None, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
    """A channel to the collector: TLS when any TLS flag is given (CA alone: server-authenticated TLS)."""
    opts: list[tuple[str, object]] = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES), *options]
    if not (cert or key or ca):
        return grpc.insecure_channel(addr, options=opts)
    if bool(cert) != bool(key):
        raise UserError("--tls-cert and --tls-key go together")
    creds = grpc.ssl_channel_credentials(root_certificates=_read(ca, "--tls-ca"),
                                         private_key=_read(key, "--tls-key"),
                                         certificate_chain=_read(cert, "--tls-cert"))
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(addr, creds, options=opts)
