"""Signing credentials for C2PA content credentials: a host's certificate chain and key, or a local test CA.

Keys and certificates belong to the host. A credentials folder holds ``signer-chain.pem`` (the signing
certificate first, then its issuers) and ``signer.key`` (its PKCS#8 private key, ES256 on P-256).
:func:`create_test_credentials` writes such a folder offline for development, with the test CA's certificate as
``ca.pem``: the trust anchor to verify with. The CA's key is not kept, so nothing else can be signed with it.

Example:
    >>> import tempfile
    >>> folder = create_test_credentials(tempfile.mkdtemp())
    >>> Credentials.load(folder).chain_pem.count(b"BEGIN CERTIFICATE")
    2
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from safeguard.errors import ConfigError

__all__ = ["CA_FILE", "CHAIN_FILE", "KEY_FILE", "Credentials", "create_test_credentials"]

CHAIN_FILE = "signer-chain.pem"
KEY_FILE = "signer.key"
CA_FILE = "ca.pem"
_TEST_CA_DAYS = 3650
_TEST_SIGNER_DAYS = 365


@dataclass(frozen=True)
class Credentials:
    """A signing certificate chain (PEM, signer first) and its private key (PEM), for ES256 signatures."""

    chain_pem: bytes
    key_pem: bytes

    @classmethod
    def load(cls, folder: str | Path) -> Credentials:
        """Read ``signer-chain.pem`` and ``signer.key`` from ``folder``.

        Raises:
            ConfigError: a file is missing or is not PEM.
        """
        folder = Path(folder)
        parts = []
        for name, marker in ((CHAIN_FILE, b"-----BEGIN CERTIFICATE-----"), (KEY_FILE, b"PRIVATE KEY-----")):
            path = folder / name
            if not path.is_file():
                raise ConfigError(
                    f"credentials folder {folder}: {name} is missing (make test credentials with "
                    "`safeguard credentials init DIR`)"
                )
            data = path.read_bytes()
            if marker not in data:
                raise ConfigError(f"credentials folder {folder}: {name} is not a PEM file")
            parts.append(data)
        return cls(parts[0], parts[1])


def create_test_credentials(folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write a test CA certificate (``ca.pem``) and a signing chain and key it issued into ``folder``, offline.

    For development only: the CA is made on this machine and trusted by nobody else.

    Raises:
        ConfigError: ``folder`` already holds credentials and ``overwrite`` is false.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as err:
        raise ConfigError("test credentials need cryptography: pip install 'diffusers-safeguard[disclosure]'") from err

    folder = Path(folder)
    existing = [name for name in (CA_FILE, CHAIN_FILE, KEY_FILE) if (folder / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{folder} already holds {', '.join(existing)}; pass overwrite (--force) to replace them")
    folder.mkdir(parents=True, exist_ok=True)

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "diffusers-safeguard test credentials"),
            ]
        )

    def usage(*, sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=sign, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=not sign, crl_sign=not sign, encipher_only=False, decipher_only=False,
        )  # fmt: skip

    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(hours=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("safeguard test CA"))
        .issuer_name(name("safeguard test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=_TEST_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    signer = (
        x509.CertificateBuilder()
        .subject_name(name("safeguard test signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=_TEST_SIGNER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign=True), critical=True)
        # C2PA accepts email protection among the extended key usages of a claim signer.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / CA_FILE).write_bytes(ca.public_bytes(pem))
    (folder / CHAIN_FILE).write_bytes(signer.public_bytes(pem) + ca.public_bytes(pem))
    key_path = folder / KEY_FILE
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return folder
