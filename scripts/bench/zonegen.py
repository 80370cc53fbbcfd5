#!/usr/bin/env python3
"""Writes a zone file of RECORDS records for ORIGIN to stdout: 70% A,
20% AAAA, 10% TXT, each at a name of its own, after an SOA, an NS and the
name server's address. Deterministic, so every server in a benchmark
loads the same text.

usage: zonegen.py ORIGIN RECORDS
"""
import sys

origin, n = sys.argv[1], int(sys.argv[2])
out = sys.stdout
out.write(f"$ORIGIN {origin}\n$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 86400 30 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n")
for i in range(n):
    k = i % 10
    if k < 7:
        out.write(f"host{i} IN A 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}\n")
    elif k < 9:
        out.write(f"host{i} IN AAAA 2001:db8::{(i >> 16) & 0xffff:x}:{i & 0xffff:x}\n")
    else:
        out.write(f"txt{i} IN TXT \"v=spf1 include:_spf.example.net ~all {i}\"\n")
