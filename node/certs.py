"""The cluster's certificates: a CA, node certificates issued by it, and the checks a
node makes of its own before it serves (TLS on the client port, mutual TLS on the
peer port; node/main.py, node/api/peers.py).

Who calls: `raftflow certs init|issue` (tools/cli/main.py), tools/raftflow_dev/local.py
(tools/up and the tests make their clusters' certificates with it), and
config.NodeConfig.read_tls when a node starts.

A node certificate names its node twice: as the subject's common name (what the peer
port checks against the configured members) and as a DNS name in its subject
alternative names (what a peer dialing it checks, whatever address it dialed). Its
other SANs are the hosts and IPs clients dial. Keys are ECDSA P-256, written 0600;
nothing here overwrites a file.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .core.names import ID_PATTERN, ID_RULE

CA_DAYS = 3650
NODE_DAYS = 365
CA_CERT, CA_KEY = "ca.pem", "ca.key"
PRIVATE_KEY_MODE = 0o600
PUBLIC_MODE = 0o644
MAX_NODE_ID = 63   # a DNS label; the CN holds 64


class CertError(ValueError):
    """A certificate or key that cannot be made, read or used; the message says what to do."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate and its private key, PEM-encoded."""
    cert_pem: bytes
    key_pem: bytes


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _check_days(days: int) -> None:
    if not 1 <= days <= 36500:
        raise CertError(f"--days must be from 1 to 36500, got {days}")


def new_ca(name: str = "raftflow cluster CA", days: int = CA_DAYS) -> KeyPair:
    """A self-signed CA that may sign node certificates (and nothing below them)."""
    _check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not host or not all(label and len(label) <= 63 and all(ch.isalnum() or ch in "-_*" for ch in label)
                           for label in labels):
        raise CertError(f"--host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host)


def issue(ca: KeyPair, node_id: str, hosts: Sequence[str], days: int = NODE_DAYS) -> KeyPair:
    """A certificate for node `node_id` signed by `ca`: CN = node id, SANs = DNS:node id
    plus every host or IP in `hosts` (the addresses clients and peers dial), usable as a
    server and as a client (peer calls are mutual TLS)."""
    if not ID_PATTERN.fullmatch(node_id):
        raise CertError(f"node id {node_id!r} is invalid: use {ID_RULE}")
    if len(node_id) > MAX_NODE_ID:
        raise CertError(f"node id {node_id[:20]}... is {len(node_id)} characters: a certificate's common name (and a "
                        f"DNS name's label) holds at most {MAX_NODE_ID}; give the node a shorter id")
    _check_days(days)
    ca_cert, ca_key = _load_ca(ca)
    names: list[x509.GeneralName] = [x509.DNSName(node_id)]
    for host in hosts:
        san = _san(host.strip())
        if san not in names:
            names.append(san)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=True, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _load_ca(ca: KeyPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert_pem)
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertError(f"the CA certificate or key is not a PEM certificate / unencrypted key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError("the CA key is not an ECDSA key; raftflow certs signs with ECDSA (make a CA with "
                        "`raftflow certs init`, or issue node certificates with your own tools)")
    if cert.public_key() != key.public_key():
        raise CertError("the CA key does not belong to the CA certificate")
    return cert, key


def node_identity(cert_pem: bytes) -> str:
    """The node id a certificate names: its subject's common name."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise CertError(f"not a PEM certificate: {e}") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def check_node_pair(pair: KeyPair, node_id: str, where: str) -> None:
    """A node's own certificate must name it (CN = node_id), hold the key given with it,
    and be valid now; else the node would serve a certificate every peer refuses."""
    try:
        cert = x509.load_pem_x509_certificate(pair.cert_pem)
        key = serialization.load_pem_private_key(pair.key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertError(f"{where}: cannot read the certificate / unencrypted private key: {e}") from None
    if cert.public_key() != key.public_key():
        raise CertError(f"{where}: tls_key_file is not the key of tls_cert_file")
    named = node_identity(pair.cert_pem)
    if named != node_id:
        raise CertError(f"{where}: the certificate names node {named!r} (its CN), but this node is {node_id!r}: "
                        f"issue one with `raftflow certs issue {node_id} --dir DIR --host HOST`")
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertError(f"{where}: the certificate is valid only from {cert.not_valid_before_utc:%Y-%m-%d} to "
                        f"{cert.not_valid_after_utc:%Y-%m-%d}: issue a new one (raftflow certs issue)")


def write_pair(pair: KeyPair, cert_path: Path, key_path: Path) -> None:
    """Write the key (0600) and the certificate (0644); refuse if either exists."""
    for path in (cert_path, key_path):
        if path.exists():
            raise CertError(f"{path} exists; raftflow certs never overwrites: move it away first")
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    _write_new(key_path, pair.key_pem, PRIVATE_KEY_MODE)
    _write_new(cert_path, pair.cert_pem, PUBLIC_MODE)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CertError(f"{path} exists; raftflow certs never overwrites: move it away first") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)   # whatever the umask


def read_pair(cert_path: Path, key_path: Path) -> KeyPair:
    try:
        return KeyPair(cert_path.read_bytes(), key_path.read_bytes())
    except OSError as e:
        raise CertError(f"cannot read {e.filename}: {e.strerror}") from None


def init_dir(directory: Path, days: int = CA_DAYS) -> Path:
    """`raftflow certs init`: a new CA in DIR (ca.pem, ca.key). Returns the CA cert's path."""
    write_pair(new_ca(days=days), directory / CA_CERT, directory / CA_KEY)
    return directory / CA_CERT


def issue_in_dir(directory: Path, node_id: str, hosts: Sequence[str], days: int = NODE_DAYS) -> tuple[Path, Path]:
    """`raftflow certs issue`: NODE_ID.pem and NODE_ID.key in DIR, signed by DIR's CA."""
    ca = read_pair(directory / CA_CERT, directory / CA_KEY)
    paths = directory / f"{node_id}.pem", directory / f"{node_id}.key"
    write_pair(issue(ca, node_id, hosts, days), *paths)
    return paths
