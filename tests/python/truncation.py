"""Sweeps the UDP payload sizes a client may advertise and parses every
reply with dnspython, which refuses trailing bytes and half records.

usage: truncation.py ADDRESS PORT NAME/TYPE...
Prints one JSON object: replies, truncated, and every malformed reply.
"""

import json
import socket
import sys

import dns.flags
import dns.message


def main():
    address, port = sys.argv[1], int(sys.argv[2])
    seen = {"replies": 0, "truncated": 0, "complete": 0, "malformed": [], "silent": []}
    sizes = [None] + list(range(512, 1501))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        for target in sys.argv[3:]:
            name, rtype = target.split("/")
            for size in sizes:
                if size is None:
                    q = dns.message.make_query(name, rtype, use_edns=False)
                else:
                    q = dns.message.make_query(name, rtype, use_edns=0, payload=size)
                s.sendto(q.to_wire(), (address, port))
                try:
                    wire, _ = s.recvfrom(65535)
                except socket.timeout:
                    seen["silent"].append([target, size])
                    continue
                seen["replies"] += 1
                limit = size if size else 512
                try:
                    r = dns.message.from_wire(wire)
                except Exception as e:  # every reply must parse whole
                    seen["malformed"].append([target, size, len(wire), type(e).__name__])
                    continue
                if len(wire) > max(limit, 512) or r.id != q.id:
                    seen["malformed"].append([target, size, len(wire), "too long or wrong id"])
                elif r.flags & dns.flags.TC:
                    seen["truncated"] += 1
                else:
                    seen["complete"] += 1
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
