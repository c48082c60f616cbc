#!/usr/bin/env python3
"""The issue's download floor for `scripts/bench`: Python's imaplib fetching every message of
INBOX over implicit TLS (certificate verified), `UID FETCH BODY.PEEK[]` in batches of 500,
without parsing or storing anything. Standard library only.

Usage: imaplib_fetch.py HOST PORT CA_FILE USER PASSWORD
Prints one line: messages bytes wall_seconds cpu_seconds (its own user + system time).
"""
import imaplib
import resource
import ssl
import sys
import time

BATCH = 500


def main():
    host, port, ca, user, password = sys.argv[1:6]
    t0 = time.monotonic()
    conn = imaplib.IMAP4_SSL(host, int(port), ssl_context=ssl.create_default_context(cafile=ca))
    conn.login(user, password)
    conn.select("INBOX", readonly=True)
    typ, data = conn.uid("SEARCH", None, "ALL")
    if typ != "OK":
        sys.exit(f"UID SEARCH: {typ} {data}")
    uids = data[0].split()
    count = size = 0
    for i in range(0, len(uids), BATCH):
        typ, data = conn.uid("FETCH", b",".join(uids[i : i + BATCH]).decode(), "(BODY.PEEK[])")
        if typ != "OK":
            sys.exit(f"UID FETCH: {typ} {data}")
        for item in data:
            if isinstance(item, tuple):
                count += 1
                size += len(item[1])
    conn.logout()
    wall = time.monotonic() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(count, size, f"{wall:.3f}", f"{ru.ru_utime + ru.ru_stime:.3f}")


if __name__ == "__main__":
    main()
