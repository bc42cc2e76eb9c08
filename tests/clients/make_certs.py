"""Makes a test CA and certificates with trustme, for the TLS tests.

    make_certs.py DIR

Writes into DIR (created if missing):
  ca.pem                 the CA's certificate (what clients trust)
  server.pem, server.key a certificate for 127.0.0.1 and localhost, and its key
  client.pem, client.key a client certificate (client and server auth usages), and key

Each run makes a new CA, so two directories hold certificates that do not trust each
other (the reload test swaps one set for the other).
"""

import pathlib
import sys

import trustme


def main() -> int:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(out / "server.key"))
    with open(out / "server.pem", "wb") as f:
        for blob in server.cert_chain_pems:
            f.write(blob.bytes())
    client = ca.issue_cert("client@faultline.test")
    client.private_key_pem.write_to_path(str(out / "client.key"))
    with open(out / "client.pem", "wb") as f:
        for blob in client.cert_chain_pems:
            f.write(blob.bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
