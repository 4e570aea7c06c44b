"""The local cluster's credentials: a self-made CA, the apiserver's serving certificate,
the service-account signing key and a static token file.

A throw-away cluster on 127.0.0.1 needs no more: every component talks to the apiserver
with a bearer token from the token file (kubeconfig ``token:``), the apiserver proves itself
with a certificate signed by the CA every kubeconfig trusts. Generated once per cluster dir
with the ``cryptography`` package (already a project dependency), mode 0600, never committed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# token users: name -> (uid, groups). system:masters bypasses RBAC (admin, controllers);
# the node's identity is what the Node authorizer expects of a kubelet.
USERS = {
    "admin": ("admin", ("system:masters",)),
    "kube-controller-manager": ("kube-controller-manager", ("system:masters",)),
    "kube-scheduler": ("kube-scheduler", ("system:masters",)),
    "kwok": ("kwok", ("system:masters",)),
    "kube-proxy": ("kube-proxy", ("system:masters",)),
}


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def apiserver_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def kubelet_client_crt(self) -> Path:
        return self.dir / "apiserver-kubelet-client.crt"

    @property
    def kubelet_client_key(self) -> Path:
        return self.dir / "apiserver-kubelet-client.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    @property
    def token_file(self) -> Path:
        return self.dir / "tokens.csv"

    @property
    def tokens_json(self) -> Path:
        return self.dir / "tokens.json"

    def token(self, user: str) -> str:
        return json.loads(self.tokens_json.read_text())[user]


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, issuer: x509.Name, public_key, signer, *, ca: bool,
          sans: list[x509.GeneralName] | None = None, usage=None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650 if ca else 365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=False, crl_sign=False,
                          content_commitment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def ensure_pki(directory: Path, service_ip: str, extra_users: dict[str, tuple[str, tuple[str, ...]]] | None = None) -> Pki:
    """Create the cluster's credentials once; later calls reuse them."""
    pki = Pki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    if pki.tokens_json.exists():
        return pki
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("lupita-local-cluster-ca")
    ca = _cert(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    _write(pki.ca_key, _key_pem(ca_key))
    _write(pki.ca_crt, ca.public_bytes(serialization.Encoding.PEM))

    server_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in (
        "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local")]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", service_ip)]
    server = _cert(_name("kube-apiserver"), ca_name, server_key.public_key(), ca_key, ca=False, sans=sans,
                   usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    _write(pki.apiserver_key, _key_pem(server_key))
    _write(pki.apiserver_crt, server.public_bytes(serialization.Encoding.PEM))

    # the apiserver's client certificate towards kubelets (logs, exec, port-forward on a real node)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert(_name("kube-apiserver-kubelet-client", "system:masters"), ca_name, client_key.public_key(),
                   ca_key, ca=False, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    _write(pki.kubelet_client_key, _key_pem(client_key))
    _write(pki.kubelet_client_crt, client.public_bytes(serialization.Encoding.PEM))

    # service-account tokens are signed with RSA (RS256, the apiserver's default)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(pki.sa_key, _key_pem(sa_key))
    _write(pki.sa_pub, sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))

    users = {**USERS, **(extra_users or {})}
    tokens = {user: secrets.token_urlsafe(32) for user in users}
    # token,user,uid,"group1,group2"
    lines = [f'{tokens[u]},{u},{uid},"{",".join(groups)}"' for u, (uid, groups) in users.items()]
    _write(pki.token_file, ("\n".join(lines) + "\n").encode())
    _write(pki.tokens_json, json.dumps(tokens, indent=2).encode())
    return pki


def kubeconfig(server: str, ca_crt: Path, user: str, token: str) -> str:
    """A kubeconfig (YAML is a superset of JSON) for ``user`` with a bearer token."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "lupita-local", "cluster": {"server": server, "certificate-authority": str(ca_crt)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "lupita-local", "context": {"cluster": "lupita-local", "user": user}}],
        "current-context": "lupita-local",
    }, indent=2) + "\n"


def issue(pki: Pki, base: Path, cn: str, org: str | None = None, *, ips: list[str] = (), dns: list[str] = (),
          server: bool = False, client: bool = False) -> tuple[Path, Path]:
    """A certificate signed by the cluster CA (e.g. a kubelet's, for its serving port and as
    its identity ``system:node:<name>``); written as ``base``.crt/.key, returned as (crt, key)."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(pki.ca_crt.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    sans += [x509.DNSName(name) for name in dns]
    usage = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    cert = _cert(_name(cn, org), ca.subject, key.public_key(), ca_key, ca=False, sans=sans or None, usage=usage)
    crt_path, key_path = base.with_suffix(".crt"), base.with_suffix(".key")
    _write(key_path, _key_pem(key))
    _write(crt_path, cert.public_bytes(serialization.Encoding.PEM))
    return crt_path, key_path
