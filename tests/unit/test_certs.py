"""raftflow certs: a CA and node certificates that chain to it, name their node and
hosts, are usable for both ends of a TLS connection, and never overwrite a file."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from raftflow import certs


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_a_node_certificate_chains_to_its_ca_and_names_the_node_and_its_hosts(tmp_path: Path):
    ca = certs.new_ca()
    node = certs.issue(ca, "n1", ["10.0.0.1", "node1.example.com", "::1"], days=30)
    cert, ca_cert = _cert(node.cert_pem), _cert(ca.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n1"
    assert certs.node_identity(node.cert_pem) == "n1"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["n1", "node1.example.com"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1")]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 30
    assert (ca_cert.not_valid_after_utc - ca_cert.not_valid_before_utc).days >= 3650

    # What a TLS client does: verify the chain and the name it dialed, by both routes.
    verifier = PolicyBuilder().store(Store([ca_cert])).build_server_verifier(x509.DNSName("node1.example.com"))
    verifier.verify(cert, [])
    PolicyBuilder().store(Store([ca_cert])).build_server_verifier(
        x509.IPAddress(ipaddress.ip_address("10.0.0.1"))).verify(cert, [])
    PolicyBuilder().store(Store([ca_cert])).build_client_verifier().verify(cert, [])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([ca_cert])).build_server_verifier(
            x509.IPAddress(ipaddress.ip_address("10.0.0.2"))).verify(cert, [])
    other = _cert(certs.new_ca().cert_pem)
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([other])).build_server_verifier(x509.DNSName("n1")).verify(cert, [])


def test_bad_input_is_refused_with_a_reason():
    ca = certs.new_ca()
    with pytest.raises(certs.CertError, match="node id '../n1' is invalid"):
        certs.issue(ca, "../n1", [])
    with pytest.raises(certs.CertError, match="is 64 characters: .* at most 63"):
        certs.issue(ca, "n" * 64, [])
    certs.issue(ca, "n" * 63, [])
    with pytest.raises(certs.CertError, match="neither an IP address nor a DNS name"):
        certs.issue(ca, "n1", ["bad host!"])
    with pytest.raises(certs.CertError, match="--days must be from 1"):
        certs.issue(ca, "n1", [], days=0)
    with pytest.raises(certs.CertError, match="does not belong to the CA certificate"):
        certs.issue(certs.KeyPair(ca.cert_pem, certs.new_ca().key_pem), "n1", [])


def test_files_are_written_once_with_private_keys_0600(tmp_path: Path):
    ca_path = certs.init_dir(tmp_path / "tls")
    assert ca_path == tmp_path / "tls" / "ca.pem"
    assert stat.S_IMODE((tmp_path / "tls" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_path.stat().st_mode) == 0o644
    cert_path, key_path = certs.issue_in_dir(tmp_path / "tls", "n2", ["127.0.0.1"])
    assert (cert_path.name, key_path.name) == ("n2.pem", "n2.key")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    _cert(cert_path.read_bytes()).verify_directly_issued_by(_cert(ca_path.read_bytes()))

    before = {p: p.read_bytes() for p in (tmp_path / "tls").iterdir()}
    with pytest.raises(certs.CertError, match="ca.pem exists; raftflow certs never overwrites"):
        certs.init_dir(tmp_path / "tls")
    with pytest.raises(certs.CertError, match="n2.pem exists"):
        certs.issue_in_dir(tmp_path / "tls", "n2", ["127.0.0.1"])
    assert {p: p.read_bytes() for p in (tmp_path / "tls").iterdir()} == before, "a refusal changes nothing"
    with pytest.raises(certs.CertError, match="cannot read .*ca.pem"):
        certs.issue_in_dir(tmp_path / "empty", "n1", [])


def test_a_node_checks_its_own_pair():
    ca = certs.new_ca()
    n1, n2 = certs.issue(ca, "n1", []), certs.issue(ca, "n2", [])
    certs.check_node_pair(n1, "n1", "here")
    with pytest.raises(certs.CertError, match="names node 'n2'"):
        certs.check_node_pair(n2, "n1", "here")
    with pytest.raises(certs.CertError, match="not the key"):
        certs.check_node_pair(certs.KeyPair(n1.cert_pem, n2.key_pem), "n1", "here")
    with pytest.raises(certs.CertError, match="cannot read"):
        certs.check_node_pair(certs.KeyPair(b"junk", n1.key_pem), "n1", "here")


def test_the_cli_makes_a_ca_and_node_certificates_and_refuses_to_overwrite(tmp_path: Path, capsys):
    from raftflow_cli.main import main

    tls = tmp_path / "tls"
    assert main(["certs", "init", "--dir", str(tls)]) == 0
    assert main(["certs", "issue", "n1", "--dir", str(tls), "--host", "10.0.0.1", "--host", "n1.example.com",
                 "--days", "90"]) == 0
    out = capsys.readouterr().out
    assert f'tls_cert_file = "{tls / "n1.pem"}"' in out and f'tls_ca_file = "{tls / "ca.pem"}"' in out
    cert = _cert((tls / "n1.pem").read_bytes())
    cert.verify_directly_issued_by(_cert((tls / "ca.pem").read_bytes()))
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["n1", "n1.example.com"]
    assert stat.S_IMODE((tls / "n1.key").stat().st_mode) == 0o600

    before = sorted(p.name for p in tls.iterdir())
    assert main(["certs", "init", "--dir", str(tls)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert main(["certs", "issue", "n2", "--dir", str(tls)]) == 2
    assert "give at least one --host" in capsys.readouterr().err
    assert main(["certs", "issue", "bad/id", "--dir", str(tls), "--host", "h"]) == 2
    assert "is invalid" in capsys.readouterr().err
    assert sorted(p.name for p in tls.iterdir()) == before, "refusals wrote nothing"
