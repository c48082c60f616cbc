#!/usr/bin/env python3
"""oauth2-server.py - a local OAuth2 token endpoint for tests (Python stdlib only).

Normally started by the `oauth2-server` shell wrapper. Direct use:
  oauth2-server.py serve --dir DIR --port 10080 [--tls-port 10443 --cert C --key K]
                   --key-file DIR/jwt.key [--pid-file F]
  oauth2-server.py ctl URL PATH [key=value ...]     POST to an /admin endpoint, print JSON

Access tokens are JWTs signed with HS256 using the key in --key-file (one line, standard
base64 of the raw key). The same file feeds Dovecot's oauth2 passdb (`imap-server` with
IMAP_OAUTH2=1) and the SMTP sink's AUTH XOAUTH2, so all three agree. Header
{"alg":"HS256","typ":"JWT","kid":K}, K = first 16 hex digits of sha256(raw key).
No "azp" claim on purpose: Dovecot 2.3 would look the key up under that name.

Endpoints (127.0.0.1; plain HTTP on --port, HTTPS on --tls-port with the testenv CA):
  POST .../token   (any path ending in /token, e.g. /TENANT/oauth2/v2.0/token)
     grant_type=client_credentials  confidential client; scope must be one RESOURCE/.default
                                    (as Microsoft requires); no refresh token
     grant_type=refresh_token       returns a NEW refresh token and invalidates the old one
                                    (OAUTH2_ROTATE=1, Microsoft-like); OAUTH2_ROTATE=0 keeps
                                    the old one and omits refresh_token (Google-like)
     grant_type=password            ROPC with OAUTH2_USERS; a refresh token only when the
                                    scope includes offline_access
     grant_type=urn:ietf:params:oauth:grant-type:device_code   device_code= client_id=
                                    (RFC 8628 3.4) -> 400 authorization_pending until approved,
                                    slow_down when polled faster than the interval (which then
                                    grows by OAUTH2_DEVICE_SLOWDOWN s), access_denied, expired_token;
                                    once approved, the same response as the refresh_token grant
                                    (a refresh token when the scope has offline_access, which
                                    then rotates as usual). A device code is redeemed once
                                    (then invalid_grant).
     Client auth: HTTP Basic (client_secret_basic) or client_id/client_secret form fields
     (client_secret_post); public clients (empty secret) send only client_id.
     Errors (RFC 6749 5.2): 400 invalid_request / invalid_grant / invalid_scope /
     unauthorized_client / unsupported_grant_type, 401 invalid_client; JSON body with
     error, error_description, error_codes (AADSTS-like numbers), timestamp, trace_id.
  POST .../devicecode  (any path ending in /devicecode, e.g. /TENANT/oauth2/v2.0/devicecode)
     client_id= [scope=] (+ client auth for a confidential client) -> RFC 8628 3.2:
     {"device_code","user_code":"BCDF-GHJK","verification_uri":"http://HOST:PORT/device",
      "verification_uri_complete":"...?user_code=BCDF-GHJK","expires_in","interval","message"}
     scope defaults to OAUTH2_DEFAULT_SCOPE; *AsApp scopes are refused (invalid_scope)
  GET  /device                      the stand-in for the browser page: says how to approve
  POST /introspect                  RFC 7662 (for Dovecot's introspection_mode = post)
  GET  /.well-known/openid-configuration, GET /health
  POST /admin/refresh-token  user= client_id= [scope=]  mint a refresh token (stands in for
                                    the interactive authorization-code consent)
  POST /admin/access-token   user= | app=CLIENT_ID, [scope= ttl= nbf= iss= bad_signature=1]
                                    mint an access token directly (expired: ttl=-60)
  POST /admin/revoke         [user=] [client_id=] [refresh_token=]   -> invalid_grant later
                                    (introspection also rejects that user's older access tokens)
  POST /admin/device-approve user_code= user=   the user signs in and consents (the browser
                                    step of the device flow); the next poll gets the tokens
  POST /admin/device-deny    user_code=         the user declines: the next poll gets access_denied
  POST /admin/fault          mode=none|status|delay|drop|garbage [status=500] [delay=5]
                                    [count=N] [endpoint=token|introspect|devicecode|all]
  GET  /admin/stats                 counters, fault, active refresh tokens

Every /token, /devicecode and /introspect request appends one JSON line to DIR/grants.jsonl:
  {"seq","ts","endpoint","grant_type","client_id","client_auth","user","ok","status",
   "error","scope","refresh_token_in","refresh_token_out","jti","expires_in","fault"}
(device flow lines also have "user_code"; /devicecode lines have endpoint "devicecode",
"interval"; approve/deny are endpoint "admin", grant_type "device_approve"/"device_deny")
so tests can count refreshes: ok == true and grant_type == "refresh_token".
Refresh tokens and device codes persist in DIR/state.json (a restart keeps them).

Settings (env, read at start):
  OAUTH2_CLIENTS="connector:connector-secret connector-public:"  id:secret ("" = public)
  OAUTH2_USERS="support:support-pass alice:alice-pass bob:bob-pass"  (password grant,
      and who may get refresh tokens)
  OAUTH2_ACCESS_TTL=3600   expires_in of access tokens (s)
  OAUTH2_REFRESH_TTL=7776000  lifetime of refresh tokens (s)
  OAUTH2_ROTATE=1          refresh-token rotation; OAUTH2_REUSE_REVOKES=0 (1 = presenting a
                           rotated-out refresh token revokes its whole family, OAuth 2.1 BCP)
  OAUTH2_ISSUER=https://login.testenv.invalid/testenv/v2.0
  OAUTH2_APP_ROLES="IMAP.AccessAsApp POP.AccessAsApp SMTP.SendAsApp"
  OAUTH2_MAIL_RESOURCES="https://outlook.office365.com https://outlook.office.com"
      (client_credentials for these resources get OAUTH2_APP_ROLES; other resources none)
  OAUTH2_DEFAULT_SCOPE="https://outlook.office.com/IMAP.AccessAsUser.All
      https://outlook.office.com/SMTP.Send offline_access"   for /admin/refresh-token
  OAUTH2_ACCESS_PAD=0      add N filler bytes to every access token (real Microsoft tokens
                           are 1.5-3 KB; use ~1500 to exercise long AUTHENTICATE lines)
  OAUTH2_DEVICE_TTL=600   expires_in of device codes (s)
  OAUTH2_DEVICE_INTERVAL=1  the polling interval a device code starts with (s; RFC 8628's
                           default is 5; 0 = no slow_down at all)
  OAUTH2_DEVICE_SLOWDOWN=5  seconds a slow_down adds to that device code's interval (RFC: 5)
  OAUTH2_FAULT=mode[:value]  initial fault (status:500, delay:5, drop, garbage)
  OAUTH2_FAULT_COUNT=-1    how many requests the fault applies to (-1 = until cleared)
  OAUTH2_FAULT_ENDPOINT=token
"""
import argparse
import base64
import datetime
import hashlib
import hmac
import http.server
import json
import os
import secrets
import signal
import socketserver
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

OIDC_SCOPES = {"openid", "profile", "email", "offline_access"}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 6.1: base-20, no vowels (no words), no look-alikes
USER_CODE_CHARS = "BCDFGHJKLMNPQRSTVWXZ"


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64url_dec(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def key_id(key):
    return hashlib.sha256(key).hexdigest()[:16]


def load_key(path):
    with open(path) as f:
        key = base64.b64decode(f.read().strip(), validate=True)
    if len(key) < 16:
        raise SystemExit(f"{path}: key too short")
    return key


def jwt_encode(claims, key, kid):
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(claims, separators=(",", ":")).encode()))
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def jwt_decode(token, key, now=None):
    """Validate like Dovecot 2.3 does (typ, HS256 signature, exp/nbf/iat). Returns claims
    or raises ValueError(reason)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    try:
        header = json.loads(b64url_dec(parts[0]))
        claims = json.loads(b64url_dec(parts[1]))
        sig = b64url_dec(parts[2])
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"malformed JWT: {e}") from None
    if header.get("typ") != "JWT" or header.get("alg") != "HS256":
        raise ValueError(f"unsupported header {header}")
    want = hmac.new(key, (parts[0] + "." + parts[1]).encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(want, sig):
        raise ValueError("bad signature")
    now = int(time.time()) if now is None else now
    if "exp" not in claims:
        raise ValueError("missing exp")
    if int(claims["exp"]) < now:
        raise ValueError("token expired")
    if int(claims.get("nbf", 0) or 0) > now:
        raise ValueError("token not valid yet")
    if int(claims.get("iat", 0) or 0) > now:
        raise ValueError("token issued in the future")
    return claims


class OAuthError(Exception):
    def __init__(self, status, error, description, code=None, headers=None):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.code, self.headers = code, headers or {}


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


class Config:
    def __init__(self):
        e = os.environ.get
        self.clients = {}
        for entry in e("OAUTH2_CLIENTS", "connector:connector-secret connector-public:").split():
            cid, _, secret = entry.partition(":")
            self.clients[cid] = secret
        self.users = dict(u.split(":", 1) for u in
                          e("OAUTH2_USERS", "support:support-pass alice:alice-pass bob:bob-pass").split())
        self.access_ttl = env_int("OAUTH2_ACCESS_TTL", 3600)
        self.refresh_ttl = env_int("OAUTH2_REFRESH_TTL", 90 * 86400)
        self.rotate = e("OAUTH2_ROTATE", "1") != "0"
        self.reuse_revokes = e("OAUTH2_REUSE_REVOKES", "0") == "1"
        self.issuer = e("OAUTH2_ISSUER", "https://login.testenv.invalid/testenv/v2.0")
        self.app_roles = e("OAUTH2_APP_ROLES", "IMAP.AccessAsApp POP.AccessAsApp SMTP.SendAsApp")
        self.mail_resources = e("OAUTH2_MAIL_RESOURCES",
                                "https://outlook.office365.com https://outlook.office.com").split()
        self.default_scope = e("OAUTH2_DEFAULT_SCOPE",
                               "https://outlook.office.com/IMAP.AccessAsUser.All "
                               "https://outlook.office.com/SMTP.Send offline_access")
        self.pad = env_int("OAUTH2_ACCESS_PAD", 0)
        self.tenant = e("OAUTH2_TENANT", "testenv")
        self.device_ttl = env_int("OAUTH2_DEVICE_TTL", 600)
        self.device_interval = env_int("OAUTH2_DEVICE_INTERVAL", 1)
        self.device_slowdown = env_int("OAUTH2_DEVICE_SLOWDOWN", 5)


class State:
    """Refresh tokens, revocations, fault settings, counters. One lock for all."""

    def __init__(self, cfg, key, root):
        self.cfg, self.key, self.kid = cfg, key, key_id(key)
        self.root = root
        self.lock = threading.Lock()
        self.path = os.path.join(root, "state.json")
        self.log_path = os.path.join(root, "grants.jsonl")
        self.refresh = {}          # token -> record
        self.revoked_before = {}   # user -> ts: introspection rejects older access tokens
        self.devices = {}          # device_code -> record (RFC 8628 device authorization)
        self.counters = {}
        self.seq = 0
        if os.path.exists(self.path):
            with open(self.path) as f:
                d = json.load(f)
            self.refresh = d.get("refresh", {})
            self.revoked_before = d.get("revoked_before", {})
            self.devices = d.get("devices", {})
        if os.path.exists(self.log_path):
            with open(self.log_path, "rb") as f:
                self.seq = sum(1 for _ in f)
        self.fault = {"mode": "none", "status": 500, "delay": 5.0, "count": -1, "endpoint": "token"}
        spec = os.environ.get("OAUTH2_FAULT", "").strip()
        if spec and spec != "none":
            mode, _, val = spec.partition(":")
            self.set_fault({"mode": mode, ("delay" if mode == "delay" else "status"): val,
                            "count": os.environ.get("OAUTH2_FAULT_COUNT", "-1"),
                            "endpoint": os.environ.get("OAUTH2_FAULT_ENDPOINT", "token")})

    # --- persistence / log (callers hold the lock) ---
    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"refresh": self.refresh, "revoked_before": self.revoked_before,
                       "devices": self.devices}, f)
        os.replace(tmp, self.path)

    def log(self, rec):
        with self.lock:
            self.seq += 1
            rec = {"seq": self.seq, "ts": round(time.time(), 3), **rec}
            with open(self.log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            k = f"{rec.get('endpoint')}:{rec.get('grant_type') or '-'}:{'ok' if rec.get('ok') else 'fail'}"
            self.counters[k] = self.counters.get(k, 0) + 1

    # --- faults ---
    def set_fault(self, p):
        mode = p.get("mode", "none") or "none"
        if mode not in ("none", "status", "delay", "drop", "garbage"):
            raise OAuthError(400, "invalid_request", f"unknown fault mode {mode!r}")
        f = {"mode": mode, "status": 500, "delay": 5.0, "count": -1, "endpoint": "token"}
        if p.get("status"):
            f["status"] = int(p["status"])
        if p.get("delay"):
            f["delay"] = float(p["delay"])
        if str(p.get("count", "")).strip():
            f["count"] = int(p["count"])
        if p.get("endpoint"):
            f["endpoint"] = p["endpoint"]
        self.fault = f
        return f

    def take_fault(self, endpoint):
        with self.lock:
            f = self.fault
            if f["mode"] == "none" or f["count"] == 0:
                return None
            if f["endpoint"] != "all" and f["endpoint"] != endpoint:
                return None
            if f["count"] > 0:
                f["count"] -= 1
            return dict(f)

    # --- tokens ---
    def access_token(self, *, sub, client_id, scope=None, aud, roles=None, ttl=None,
                     nbf_offset=0, iss=None, idtyp="user", bad_signature=False):
        now = int(time.time())
        ttl = self.cfg.access_ttl if ttl is None else int(ttl)
        # Valid from a second before it is made, as Microsoft's tokens are (theirs from
        # minutes before): a validator that reads the coarse clock (Dovecot calls time(),
        # which lags the precise clock by up to a few milliseconds) must not see a token
        # made in the same instant as "not valid yet". "xms_made" keeps the true second for
        # revocation.
        valid_from = now - 1 if not int(nbf_offset) else now + int(nbf_offset)
        claims = {
            "iss": iss or self.cfg.issuer, "sub": sub, "aud": aud,
            "iat": now - 1, "nbf": valid_from, "exp": now + ttl, "xms_made": now,
            "jti": uuid.uuid4().hex, "client_id": client_id, "appid": client_id,
            "tid": self.cfg.tenant, "idtyp": idtyp,
        }
        if idtyp == "user":
            # short names, e.g. "IMAP.AccessAsUser.All SMTP.Send" (Microsoft calls it 'scp')
            claims["scope"] = scope or ""
            claims["preferred_username"] = sub
            claims["email"] = sub
        else:
            claims["oid"] = sub
            # Microsoft puts app permissions into a 'roles' array. Dovecot 2.3 checks only a
            # 'scope' claim (and JSON arrays are not usable there), so app tokens carry the
            # roles as a space-separated 'scope' string too.
            claims["roles"] = roles or ""
            claims["scope"] = roles or ""
        if self.cfg.pad > 0:
            claims["xms_pad"] = "x" * self.cfg.pad
        key = self.key if not bad_signature else secrets.token_bytes(32)
        return jwt_encode(claims, key, self.kid), claims

    def new_refresh(self, *, user, client_id, scope, family=None):
        tok = "rt." + secrets.token_urlsafe(32)
        now = time.time()
        self.refresh[tok] = {"user": user, "client_id": client_id, "scope": scope,
                             "issued": now, "expires": now + self.cfg.refresh_ttl,
                             "family": family or uuid.uuid4().hex, "used": None, "revoked": None}
        return tok

    def new_device(self, *, client_id, scope):
        """A device code + user code (RFC 8628 3.2). Caller holds the lock."""
        while True:
            raw = "".join(secrets.choice(USER_CODE_CHARS) for _ in range(8))
            user_code = raw[:4] + "-" + raw[4:]
            if self.device_by_user_code(user_code) is None:
                break
        dc = "dc." + secrets.token_urlsafe(32)
        now = time.time()
        self.devices[dc] = {"user_code": user_code, "client_id": client_id, "scope": scope,
                            "issued": now, "expires": now + self.cfg.device_ttl,
                            "interval": self.cfg.device_interval, "last_poll": None,
                            "status": "pending", "user": None}
        return dc, self.devices[dc]

    def device_by_user_code(self, user_code):
        """-> (device_code, record) or None; USER_CODE is matched case-insensitively, with
        or without its dash (people type it). Caller holds the lock."""
        want = "".join(c for c in (user_code or "").upper() if c.isalnum())
        for dc, d in self.devices.items():
            if d["user_code"].replace("-", "") == want:
                return dc, d
        return None


def split_scope(s):
    return [x for x in (s or "").split() if x]


def short_scopes(scopes):
    """Requested scope URIs -> the short names that go into the token's 'scope' claim (like
    Microsoft's 'scp'): '.../IMAP.AccessAsUser.All' -> 'IMAP.AccessAsUser.All'. Gmail's
    'https://mail.google.com/' covers IMAP and SMTP, so it maps to both names. Dovecot's
    oauth2 passdb and the SMTP sink check these short names."""
    out = []
    for s in scopes:
        if s in OIDC_SCOPES:
            continue
        if s.rstrip("/") == "https://mail.google.com":
            names = ["IMAP.AccessAsUser.All", "SMTP.Send"]
        else:
            names = [s.rstrip("/").rsplit("/", 1)[-1]]
        out += [n for n in names if n not in out]
    return out


def resource_of(scope):
    """'https://outlook.office.com/IMAP.AccessAsUser.All' -> 'https://outlook.office.com'"""
    if "://" in scope:
        scheme, rest = scope.split("://", 1)
        host = rest.split("/", 1)[0]
        return f"{scheme}://{host}"
    return scope


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "testenv-oauth2/1"
    st: State = None  # set on the class by serve()

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s %s\n" % (time.strftime("%H:%M:%S"), self.address_string(), fmt % args))
        sys.stdout.flush()

    def setup(self):
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)

    # --- I/O helpers ---
    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(n)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, body, ctype="application/json; charset=utf-8", headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_oauth_error(self, e):
        body = {"error": e.error, "error_description": e.description,
                "error_codes": [e.code] if e.code else [],
                "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
                "trace_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4())}
        self.send(e.status, body, headers=e.headers)

    def form(self, body):
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            d = json.loads(body or b"{}")
            return {k: str(v) for k, v in d.items()}
        pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        out = {}
        for k, v in pairs:
            if k in out:
                raise OAuthError(400, "invalid_request", f"parameter '{k}' included more than once", 90015)
            out[k] = v
        return out

    # --- fault injection; returns True if the request was consumed ---
    def apply_fault(self, endpoint, rec):
        f = self.st.take_fault(endpoint)
        if not f:
            return False
        rec["fault"] = f["mode"]
        if f["mode"] == "delay":
            time.sleep(f["delay"])
            rec["fault"] = f"delay:{f['delay']}"
            return False
        if f["mode"] == "status":
            rec.update(ok=False, status=f["status"], error="fault_injected")
            self.st.log(rec)
            hdrs = {"Retry-After": "1"} if f["status"] in (429, 503) else {}
            err = "temporarily_unavailable" if f["status"] in (429, 503) else "server_error"
            self.send(f["status"], {"error": err, "error_description": "fault injected by testenv"},
                      headers=hdrs)
        elif f["mode"] == "garbage":
            rec.update(ok=False, status=200, error="fault_garbage")
            self.st.log(rec)
            self.send(200, "<html><body>Proxy error: upstream unavailable</body></html>",
                      ctype="text/html")
        elif f["mode"] == "drop":
            rec.update(ok=False, status=0, error="fault_drop")
            self.st.log(rec)
            self.close_connection = True
            try:
                self.request.shutdown(2)
            except OSError:
                pass
        return True

    def base_url(self):
        """scheme://host:port as the client addressed us (for URLs we hand out)."""
        scheme = "https" if isinstance(self.request, ssl.SSLSocket) else "http"
        return f"{scheme}://{self.headers.get('Host') or '127.0.0.1:%d' % self.server.server_address[1]}"

    # --- routing ---
    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/health":
            return self.send(200, {"status": "ok"})
        if path == "/device":
            return self.send(200, "<html><body><h1>testenv device login</h1><p>This test server has "
                             "no sign-in page: approve a code with <code>oauth2-server approve USER_CODE "
                             "USER</code> (or POST /admin/device-approve user_code=&amp;user=), decline "
                             "it with <code>oauth2-server deny USER_CODE</code>.</p></body></html>",
                             ctype="text/html; charset=utf-8")
        if path.endswith("/.well-known/openid-configuration"):
            base = self.base_url()
            return self.send(200, {
                "issuer": self.st.cfg.issuer,
                "token_endpoint": base + "/token",
                "device_authorization_endpoint": base + "/devicecode",
                "introspection_endpoint": base + "/introspect",
                "grant_types_supported": ["client_credentials", "refresh_token", "password", DEVICE_GRANT],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            })
        if path == "/admin/stats":
            with self.st.lock:
                now = time.time()
                active = [{"user": r["user"], "client_id": r["client_id"], "token": t}
                          for t, r in self.st.refresh.items()
                          if not r["used"] and not r["revoked"] and r["expires"] > now]
                devices = [{"user_code": d["user_code"], "client_id": d["client_id"], "status": d["status"],
                            "user": d["user"], "interval": d["interval"], "expires_in": int(d["expires"] - now)}
                           for d in self.st.devices.values() if d["expires"] > now]
                return self.send(200, {"counters": self.st.counters, "fault": self.st.fault,
                                       "active_refresh_tokens": active, "device_codes": devices,
                                       "log_seq": self.st.seq})
        self.send(404, {"error": "not_found"})

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        body = self.read_body()
        try:
            if path.endswith("/token"):
                return self.token(body)
            if path.endswith("/devicecode"):
                return self.devicecode(body)
            if path.endswith("/introspect"):
                return self.introspect(body)
            if path.startswith("/admin/"):
                return self.admin(path[len("/admin/"):], body)
            self.send(404, {"error": "not_found"})
        except OAuthError as e:
            self.send_oauth_error(e)

    # --- client authentication (RFC 6749 2.3.1) ---
    def client_auth(self, p, rec, require_confidential=False):
        cfg = self.st.cfg
        basic = self.headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            if "client_secret" in p:
                raise OAuthError(400, "invalid_request", "more than one client authentication method used", 90014)
            try:
                raw = base64.b64decode(basic[6:].strip(), validate=True).decode()
                cid, _, secret = raw.partition(":")
                cid, secret = urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(secret)
            except Exception:  # noqa: BLE001
                raise OAuthError(401, "invalid_client", "malformed Basic authorization header", 7000216,
                                 {"WWW-Authenticate": 'Basic realm="testenv"'}) from None
            if p.get("client_id") and p["client_id"] != cid:
                raise OAuthError(400, "invalid_request", "client_id differs from the Basic credentials", 900144)
            method = "basic"
        else:
            cid, secret = p.get("client_id", ""), p.get("client_secret")
            method = "post" if secret is not None else "none"
        rec["client_id"], rec["client_auth"] = cid, method
        if not cid:
            raise OAuthError(400, "invalid_request", "client_id is required", 900144)
        if cid not in cfg.clients:
            raise OAuthError(400 if method == "none" else 401, "invalid_client" if method != "none" else "unauthorized_client",
                             f"application '{cid}' was not found", 700016)
        want = cfg.clients[cid]
        if want:  # confidential client: secret required
            if not secret:
                raise OAuthError(401, "invalid_client", "client_secret is required for a confidential client", 7000218)
            if not hmac.compare_digest(want.encode(), secret.encode()):
                raise OAuthError(401, "invalid_client", "invalid client secret provided", 7000215,
                                 {"WWW-Authenticate": 'Basic realm="testenv"'} if method == "basic" else None)
        elif require_confidential:
            raise OAuthError(400, "unauthorized_client", f"public client '{cid}' may not use this grant", 700025)
        return cid

    def token(self, body):
        st, cfg = self.st, self.st.cfg
        rec = {"endpoint": "token", "grant_type": None, "client_id": None, "user": None}
        if self.apply_fault("token", rec):
            return
        try:
            p = self.urlencoded_form(body)
            gt = rec["grant_type"] = p.get("grant_type")
            if not gt:
                raise OAuthError(400, "invalid_request", "grant_type is required", 900144)
            if gt == "client_credentials":
                resp = self.grant_client_credentials(p, rec)
            elif gt == "refresh_token":
                resp = self.grant_refresh(p, rec)
            elif gt == "password":
                resp = self.grant_password(p, rec)
            elif gt == DEVICE_GRANT:
                resp = self.grant_device_code(p, rec)
            else:
                self.client_auth(p, rec)
                raise OAuthError(400, "unsupported_grant_type", f"grant_type '{gt}' is not supported", 70003)
        except OAuthError as e:
            rec.update(ok=False, status=e.status, error=e.error, error_description=e.description)
            st.log(rec)
            raise
        rec.update(ok=True, status=200, expires_in=resp.get("expires_in"), scope=resp.get("scope"))
        st.log(rec)
        self.send(200, resp)

    def urlencoded_form(self, body):
        ctype = self.headers.get("Content-Type", "")
        if "application/x-www-form-urlencoded" not in ctype.lower():
            raise OAuthError(400, "invalid_request",
                             "Content-Type must be application/x-www-form-urlencoded", 900144)
        return self.form(body)

    def devicecode(self, body):
        """RFC 8628 3.1/3.2: the device authorization request."""
        st = self.st
        rec = {"endpoint": "devicecode", "grant_type": DEVICE_GRANT, "client_id": None, "user": None}
        if self.apply_fault("devicecode", rec):
            return
        try:
            p = self.urlencoded_form(body)
            cid = self.client_auth(p, rec)
            scope = p.get("scope") or st.cfg.default_scope
            self.check_delegated(split_scope(scope))
            with st.lock:
                dc, d = st.new_device(client_id=cid, scope=scope)
                st.save()
        except OAuthError as e:
            rec.update(ok=False, status=e.status, error=e.error, error_description=e.description)
            st.log(rec)
            raise
        uri = self.base_url() + "/device"
        resp = {"device_code": dc, "user_code": d["user_code"], "verification_uri": uri,
                "verification_uri_complete": uri + "?user_code=" + d["user_code"],
                "expires_in": st.cfg.device_ttl, "interval": d["interval"],
                "message": f"To sign in, open {uri} and enter the code {d['user_code']} to authenticate."}
        rec.update(ok=True, status=200, scope=scope, user_code=d["user_code"],
                   expires_in=st.cfg.device_ttl, interval=d["interval"])
        st.log(rec)
        self.send(200, resp)

    def grant_device_code(self, p, rec):
        """RFC 8628 3.4/3.5: the client polls with its device code."""
        st = self.st
        cid = self.client_auth(p, rec)
        dc = p.get("device_code")
        if not dc:
            raise OAuthError(400, "invalid_request", "device_code is required", 900144)
        with st.lock:
            d = st.devices.get(dc)
            if d is None:
                raise OAuthError(400, "invalid_grant", "the device code is unknown or malformed")
            rec["user_code"] = d["user_code"]
            if d["client_id"] != cid:
                raise OAuthError(400, "invalid_grant", "the device code was issued to a different client")
            now = time.time()
            last, d["last_poll"] = d["last_poll"], now
            if d["status"] == "redeemed":
                rec["user"] = d["user"]
                raise OAuthError(400, "invalid_grant", "the device code was already redeemed")
            if d["expires"] < now:
                raise OAuthError(400, "expired_token", "the device code has expired; request a new one", 70019)
            if d["status"] == "denied":
                raise OAuthError(400, "access_denied", "the user declined the authorization request")
            if d["status"] == "pending":
                # slow_down only between two polls (RFC 8628 3.5); the first one may come at once
                if last is not None and now - last < d["interval"]:
                    d["interval"] += st.cfg.device_slowdown
                    st.save()
                    raise OAuthError(400, "slow_down", "polling too fast: wait at least "
                                     f"{d['interval']} s between requests from now on")
                raise OAuthError(400, "authorization_pending",
                                 "the user has not yet finished the authorization", 70016)
            # approved: the same tokens as a refresh_token grant with the consented scope
            d["status"], d["redeemed"] = "redeemed", now
            rec["user"] = d["user"]
            resp = self.user_token_response(user=d["user"], cid=cid, access_scopes=split_scope(d["scope"]),
                                            refresh_scope=d["scope"], rec=rec)
            st.save()
            return resp

    def grant_client_credentials(self, p, rec):
        st = self.st
        cid = self.client_auth(p, rec, require_confidential=True)
        scopes = split_scope(p.get("scope"))
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise OAuthError(400, "invalid_scope",
                             "client credential flows must have exactly one scope value with /.default "
                             f"suffixed to the resource identifier (got {p.get('scope')!r})", 1002012)
        resource = scopes[0][:-len("/.default")]
        roles = st.cfg.app_roles if resource in st.cfg.mail_resources else ""
        tok, claims = st.access_token(sub=f"sp-{cid}", client_id=cid, aud=resource, roles=roles, idtyp="app")
        rec.update(user=None, jti=claims["jti"], app_roles=roles)
        return {"token_type": "Bearer", "expires_in": st.cfg.access_ttl,
                "ext_expires_in": st.cfg.access_ttl, "access_token": tok}

    def user_token_response(self, *, user, cid, access_scopes, refresh_scope, rec, family=None, old=None):
        """access_scopes: scopes of this access token (OIDC ones are dropped from it);
        refresh_scope: what a (new) refresh token carries. Caller holds st.lock."""
        st = self.st
        api = [s for s in access_scopes if s not in OIDC_SCOPES]
        aud = resource_of(api[0]) if api else "00000003-0000-0000-c000-000000000000"
        tok, claims = st.access_token(sub=user, client_id=cid, scope=" ".join(short_scopes(api)), aud=aud)
        resp = {"token_type": "Bearer", "scope": " ".join(api), "expires_in": st.cfg.access_ttl,
                "ext_expires_in": st.cfg.access_ttl, "access_token": tok}
        rec.update(user=user, jti=claims["jti"])
        if old is not None or "offline_access" in split_scope(refresh_scope):
            if old is None or st.cfg.rotate:
                rt = st.new_refresh(user=user, client_id=cid, scope=refresh_scope, family=family)
                resp["refresh_token"] = rt
                rec["refresh_token_out"] = rt
            if old is not None and st.cfg.rotate:
                st.refresh[old]["used"] = time.time()
            st.save()
        return resp

    def grant_refresh(self, p, rec):
        st = self.st
        cid = self.client_auth(p, rec)
        old = p.get("refresh_token")
        rec["refresh_token_in"] = old
        if not old:
            raise OAuthError(400, "invalid_request", "refresh_token is required", 900144)
        with st.lock:
            r = st.refresh.get(old)
            if r is None:
                raise OAuthError(400, "invalid_grant", "the refresh token is unknown or malformed", 9002313)
            rec["user"] = r["user"]
            if r["revoked"]:
                raise OAuthError(400, "invalid_grant",
                                 "the refresh token was revoked (user changed password or consent was withdrawn)", 50173)
            if r["used"]:
                if st.cfg.reuse_revokes:
                    now = time.time()
                    for t2 in st.refresh.values():
                        if t2["family"] == r["family"] and not t2["revoked"]:
                            t2["revoked"] = now
                    st.save()
                raise OAuthError(400, "invalid_grant",
                                 "the refresh token was already redeemed (rotated); use the newest one", 70008)
            if r["expires"] < time.time():
                raise OAuthError(400, "invalid_grant", "the refresh token has expired due to inactivity", 700082)
            if r["client_id"] != cid:
                raise OAuthError(400, "invalid_grant", "the refresh token was issued to a different client", 70000)
            granted = split_scope(r["scope"])
            want = split_scope(p.get("scope")) or granted
            extra = [s for s in want if s not in granted and s not in OIDC_SCOPES]
            if extra:
                raise OAuthError(400, "invalid_scope",
                                 f"scope not granted to this refresh token: {' '.join(extra)}", 65001)
            # the new refresh token keeps the whole original grant (like Microsoft's
            # multi-resource refresh tokens); the access token gets what was asked for
            return self.user_token_response(user=r["user"], cid=cid, access_scopes=want,
                                            refresh_scope=r["scope"], rec=rec,
                                            family=r["family"], old=old)

    @staticmethod
    def check_delegated(scopes):
        bad = [s for s in scopes if s.endswith("AsApp")]
        if bad:
            raise OAuthError(400, "invalid_scope",
                             f"{' '.join(bad)} is an application permission, not a delegated scope", 70011)

    def grant_password(self, p, rec):
        st = self.st
        cid = self.client_auth(p, rec)
        user, pw = p.get("username", ""), p.get("password", "")
        rec["user"] = user
        if not user or not pw:
            raise OAuthError(400, "invalid_request", "username and password are required", 900144)
        if st.cfg.users.get(user) != pw:
            raise OAuthError(400, "invalid_grant", "error validating credentials due to invalid username or password", 50126)
        scope = p.get("scope") or " ".join(s for s in split_scope(st.cfg.default_scope) if s != "offline_access")
        self.check_delegated(split_scope(scope))
        with st.lock:
            return self.user_token_response(user=user, cid=cid, access_scopes=split_scope(scope),
                                            refresh_scope=scope, rec=rec)

    def introspect(self, body):
        st = self.st
        rec = {"endpoint": "introspect", "grant_type": None, "client_id": None, "user": None}
        if self.apply_fault("introspect", rec):
            return
        p = self.form(body)
        # Dovecot 2.3 sends client_id=&client_secret= (empty unless configured). Empty = no
        # client authentication; given credentials must be right.
        if p.get("client_id") or self.headers.get("Authorization", "").lower().startswith("basic "):
            try:
                self.client_auth(p, rec)
            except OAuthError as e:
                rec.update(ok=False, status=e.status, error=e.error)
                st.log(rec)
                raise
        tok = p.get("token", "")
        try:
            claims = jwt_decode(tok, st.key)
            if claims.get("iss") != st.cfg.issuer:
                raise ValueError("foreign issuer")
            rb = st.revoked_before.get(claims.get("sub"))
            if rb and claims.get("xms_made", claims.get("iat", 0)) <= rb:
                raise ValueError("revoked")
        except ValueError as e:
            rec.update(ok=False, status=200, error=str(e))
            st.log(rec)
            return self.send(200, {"active": False})
        out = {"active": True, "token_type": "Bearer", "username": claims.get("sub")}
        out.update({k: v for k, v in claims.items() if k != "xms_pad"})
        rec.update(ok=True, status=200, user=claims.get("sub"), jti=claims.get("jti"))
        st.log(rec)
        self.send(200, out)

    def admin(self, what, body):
        st = self.st
        p = self.form(body)
        if what == "refresh-token":
            user, cid = p.get("user", ""), p.get("client_id") or next(iter(st.cfg.clients))
            if user not in st.cfg.users:
                raise OAuthError(400, "invalid_request", f"unknown user {user!r} (OAUTH2_USERS)")
            if cid not in st.cfg.clients:
                raise OAuthError(400, "invalid_request", f"unknown client {cid!r} (OAUTH2_CLIENTS)")
            scope = p.get("scope") or st.cfg.default_scope
            self.check_delegated(split_scope(scope))
            with st.lock:
                rt = st.new_refresh(user=user, client_id=cid, scope=scope)
                st.save()
            st.log({"endpoint": "admin", "grant_type": "mint_refresh_token", "client_id": cid,
                    "user": user, "ok": True, "status": 200, "refresh_token_out": rt, "scope": scope})
            return self.send(200, {"refresh_token": rt, "user": user, "client_id": cid, "scope": scope})
        if what == "access-token":
            cid = p.get("client_id") or next(iter(st.cfg.clients))
            ttl = int(p["ttl"]) if p.get("ttl") else None
            kw = dict(client_id=cid, ttl=ttl, nbf_offset=int(p.get("nbf") or 0), iss=p.get("iss") or None,
                      bad_signature=p.get("bad_signature") in ("1", "true", "yes"))
            if p.get("app"):
                res = p.get("resource") or st.cfg.mail_resources[0]
                roles = p.get("roles", st.cfg.app_roles)
                tok, claims = st.access_token(sub=f"sp-{p['app']}", aud=res, roles=roles, idtyp="app", **{**kw, "client_id": p["app"]})
            else:
                scope = p.get("scope") or st.cfg.default_scope
                api = [s for s in split_scope(scope) if s not in OIDC_SCOPES]
                tok, claims = st.access_token(sub=p.get("user", "support"), scope=" ".join(short_scopes(api)),
                                              aud=resource_of(api[0]) if api else "", **kw)
            return self.send(200, {"access_token": tok, "claims": claims})
        if what == "revoke":
            n = 0
            with st.lock:
                now = time.time()
                for t, r in st.refresh.items():
                    if r["revoked"]:
                        continue
                    if (p.get("refresh_token") and t == p["refresh_token"]) or (
                            not p.get("refresh_token") and (not p.get("user") or r["user"] == p["user"])
                            and (not p.get("client_id") or r["client_id"] == p["client_id"])):
                        r["revoked"] = now
                        n += 1
                if p.get("user"):
                    st.revoked_before[p["user"]] = int(now)
                st.save()
            return self.send(200, {"revoked": n})
        if what in ("device-approve", "device-deny"):
            approve = what == "device-approve"
            uc, user = p.get("user_code", ""), p.get("user", "")
            if approve and user not in st.cfg.users:
                raise OAuthError(400, "invalid_request", f"unknown user {user!r} (OAUTH2_USERS)")
            with st.lock:
                found = st.device_by_user_code(uc)
                if found is None:
                    raise OAuthError(400, "invalid_request", f"unknown user code {uc!r}")
                d = found[1]
                if d["expires"] < time.time():
                    raise OAuthError(400, "expired_token", f"user code {d['user_code']} has expired")
                if d["status"] != "pending":
                    raise OAuthError(400, "invalid_request", f"user code {d['user_code']} is already {d['status']}")
                d["status"], d["user"] = ("approved", user) if approve else ("denied", None)
                st.save()
                out = {"user_code": d["user_code"], "status": d["status"], "user": d["user"],
                       "client_id": d["client_id"], "scope": d["scope"]}
            st.log({"endpoint": "admin", "grant_type": "device_approve" if approve else "device_deny",
                    "client_id": out["client_id"], "user": out["user"], "ok": True, "status": 200,
                    "user_code": out["user_code"], "scope": out["scope"]})
            return self.send(200, out)
        if what == "fault":
            with st.lock:
                f = st.set_fault(p)
            return self.send(200, f)
        self.send(404, {"error": "not_found"})


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, handler, ctx=None):
        self.ctx = ctx
        super().__init__(addr, handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.ctx:
            # handshake later, in the handler thread (see Handler.setup)
            sock = self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        ex = sys.exc_info()[1]
        if isinstance(ex, (ssl.SSLError, ConnectionError, TimeoutError)):
            print(f"{time.strftime('%H:%M:%S')} {client_address[0]} connection error: {ex!r}", flush=True)
            return
        super().handle_error(request, client_address)


def serve(a):
    os.makedirs(a.dir, exist_ok=True)
    cfg = Config()
    key = load_key(a.key_file)
    Handler.st = State(cfg, key, a.dir)
    servers = [Server((a.host, a.port), Handler)]
    if a.tls_port:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(a.cert, a.key)
        servers.append(Server((a.host, a.tls_port), Handler, ctx))
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True) for s in servers]
    for t in threads:
        t.start()
    if a.pid_file:
        with open(a.pid_file + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(a.pid_file + ".tmp", a.pid_file)
    print(f"{time.strftime('%H:%M:%S')} listening on http://{a.host}:{a.port}"
          + (f" and https://{a.host}:{a.tls_port}" if a.tls_port else "")
          + f"; kid={key_id(key)} issuer={cfg.issuer} access_ttl={cfg.access_ttl}s rotate={cfg.rotate}",
          flush=True)
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    # a plain stop.wait() can sleep through SIGTERM for seconds (the signal may land on a
    # server thread); waking up every 0.1 s lets the main thread run the handler promptly
    while not stop.wait(0.1):
        pass
    for s in servers:
        s.shutdown()
        s.server_close()
    if a.pid_file:
        try:
            os.unlink(a.pid_file)
        except FileNotFoundError:
            pass
    print(f"{time.strftime('%H:%M:%S')} stopped", flush=True)


def ctl(a):
    data = urllib.parse.urlencode(dict(kv.split("=", 1) for kv in a.params)).encode()
    method = "GET" if a.path.endswith("/stats") else "POST"
    req = urllib.request.Request(a.url.rstrip("/") + a.path, data=data if method == "POST" else None,
                                 method=method,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            out = json.load(r)
    except urllib.error.HTTPError as e:
        print(e.read().decode(), file=sys.stderr)
        sys.exit(1)
    if a.field:
        print(out[a.field])
    else:
        print(json.dumps(out, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--dir", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=10080)
    s.add_argument("--tls-port", type=int, default=0)
    s.add_argument("--cert")
    s.add_argument("--key")
    s.add_argument("--key-file", required=True, help="base64 HS256 key shared with Dovecot")
    s.add_argument("--pid-file")
    c = sub.add_parser("ctl")
    c.add_argument("url")
    c.add_argument("path")
    c.add_argument("params", nargs="*")
    c.add_argument("--field")
    a = ap.parse_args()
    if a.cmd == "serve":
        serve(a)
    else:
        ctl(a)


if __name__ == "__main__":
    main()
