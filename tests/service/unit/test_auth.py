"""Access tokens without a server: every refusal has its reason, the key decides the algorithm,
and JWKS keys rotate by editing the file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from media_service.auth import (
    ALL,
    MAX_TOKEN_BYTES,
    REASONS,
    AuthError,
    Grants,
    Identity,
    Key,
    KeyConfigError,
    KeyFiles,
    KeySet,
    Verifier,
    bearer,
    mint,
    parse_grants,
    parse_jwks,
    parse_ttl,
    read_secret,
)

SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], secret: bytes = b"") -> str:
    """A token made by hand, as an attacker would: any header, HMAC over it with ``secret``."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest() if secret else b""
    return f"{signing_input}.{b64(signature)}"


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 600, **extra}


def secret_verifier(**kwargs: Any) -> Verifier:
    keys = KeySet(Key("HS256", SECRET))
    return Verifier(lambda: keys, **kwargs)


def reason(verifier: Verifier, token: str | None) -> str:
    with pytest.raises(AuthError) as refused:
        verifier.verify(token)
    assert not token or token not in str(refused.value)
    return refused.value.reason


# Keys of each kind the JWKS may hold, made once: RSA generation is slow.
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = {ec.EllipticCurvePrivateKey: ECAlgorithm, rsa.RSAPrivateKey: RSAAlgorithm}
    kind = next((a for t, a in algorithm.items() if isinstance(private, t)), OKPAlgorithm)
    return {**kind.to_jwk(private.public_key(), as_dict=True), "kid": kid, **extra}


def jwks_verifier(*keys: dict[str, Any], **kwargs: Any) -> Verifier:
    keyset = KeySet(by_kid=parse_jwks(json.dumps({"keys": list(keys)})))
    return Verifier(lambda: keyset, **kwargs)


class TestSecret:
    def test_a_minted_token_proves_its_user_with_every_grant(self) -> None:
        token = mint(SECRET, "alice", 60)
        assert secret_verifier().verify(token) == Identity("alice", ALL)

    def test_grants_in_the_token_limit_it(self) -> None:
        token = mint(SECRET, "alice", 60, grants=parse_grants(["message:bob"]))
        grants = secret_verifier().verify(token).grants
        assert not grants.publish and grants.may_message("bob") and not grants.may_message("carol")
        assert parse_grants(["publish", "message:*"]) == Grants(True, frozenset({"*"}))

    def test_audience_and_issuer_are_checked_when_configured(self) -> None:
        verifier = secret_verifier(audience="media", issuer="https://id.example")
        good = mint(SECRET, "alice", 60, audience="media", issuer="https://id.example")
        assert verifier.verify(good).user == "alice"
        assert reason(verifier, mint(SECRET, "alice", 60, audience="other", issuer="https://id.example")) == (
            "wrong_audience"
        )
        assert reason(verifier, mint(SECRET, "alice", 60, issuer="https://id.example")) == "wrong_audience"
        assert reason(verifier, mint(SECRET, "alice", 60, audience="media", issuer="https://x")) == "wrong_issuer"
        assert reason(verifier, mint(SECRET, "alice", 60, audience="media")) == "wrong_issuer"

    def test_an_audience_is_not_checked_when_none_is_configured(self) -> None:
        assert secret_verifier().verify(mint(SECRET, "alice", 60, audience="anything")).user == "alice"

    def test_a_small_clock_difference_is_tolerated(self) -> None:
        verifier = secret_verifier()
        now = time.time()
        assert verifier.verify(mint(SECRET, "alice", 60, now=now - 65)).user == "alice"  # expired 5 s ago
        assert reason(verifier, mint(SECRET, "alice", 60, now=now - 80)) == "expired"  # 20 s ago

    @pytest.mark.parametrize(
        ("token", "expected"),
        [
            (None, "missing"),
            ("", "missing"),
            ("x" * (MAX_TOKEN_BYTES + 1), "oversized"),
            ("not a token", "malformed"),
            ("a.b.c", "malformed"),
            (forge({"alg": "HS256"}, claims())[:-10] + "!!!!!!!!!!", "malformed"),
            (forge({"alg": "none"}, claims()), "wrong_algorithm"),
            (forge({"alg": "HS512"}, claims(), SECRET), "wrong_algorithm"),
            (forge({"alg": "HS256"}, claims(), OTHER_SECRET), "bad_signature"),
            (forge({"alg": "HS256", "kid": "k9"}, claims(), SECRET), "unknown_kid"),
            (forge({"alg": "HS256"}, claims(exp=int(time.time()) - 3600), SECRET), "expired"),
            (forge({"alg": "HS256"}, claims(nbf=int(time.time()) + 3600), SECRET), "not_yet_valid"),
            (forge({"alg": "HS256"}, claims(iat=int(time.time()) + 3600), SECRET), "not_yet_valid"),
            (forge({"alg": "HS256"}, {"exp": int(time.time()) + 60}, SECRET), "missing_claim"),
            (forge({"alg": "HS256"}, {"sub": "alice"}, SECRET), "missing_claim"),
            (forge({"alg": "HS256"}, claims(sub=7), SECRET), "invalid_claim"),
            (forge({"alg": "HS256"}, claims(sub="a b"), SECRET), "invalid_claim"),
            (forge({"alg": "HS256"}, claims(sub="x" * 129), SECRET), "invalid_claim"),
            (forge({"alg": "HS256"}, claims(exp="soon"), SECRET), "malformed"),
            (forge({"alg": "HS256"}, claims(grants=["publish"]), SECRET), "invalid_claim"),
            (forge({"alg": "HS256"}, claims(grants={"publish": "yes"}), SECRET), "invalid_claim"),
            (forge({"alg": "HS256"}, claims(grants={"message": "bob"}), SECRET), "invalid_claim"),
        ],
    )
    def test_every_bad_token_is_refused_with_its_reason(self, token: str | None, expected: str) -> None:
        assert expected in REASONS
        assert reason(secret_verifier(), token) == expected

    def test_grants_left_out_are_not_granted(self) -> None:
        token = forge({"alg": "HS256"}, claims(grants={"future": True}), SECRET)
        assert secret_verifier().verify(token).grants == Grants(False, frozenset())

    def test_short_and_missing_secrets_stop_start_up(self, tmp_path: Path) -> None:
        (tmp_path / "short").write_bytes(b"x" * 31)
        (tmp_path / "ok").write_bytes(SECRET + b"\n")
        assert read_secret(str(tmp_path / "ok")).key == SECRET  # a trailing newline is not part of it
        with pytest.raises(KeyConfigError, match="holds 31 bytes; at least 32"):
            read_secret(str(tmp_path / "short"))
        with pytest.raises(KeyConfigError, match="cannot read MEDIA_AUTH_SECRET_FILE"):
            read_secret(str(tmp_path / "missing"))


class TestJwks:
    @pytest.mark.parametrize(("private", "algorithm"), [(EC_KEY, "ES256"), (ED_KEY, "EdDSA"), (RSA_KEY, "RS256")])
    def test_each_key_type_verifies_its_algorithm(self, private: Any, algorithm: str) -> None:
        verifier = jwks_verifier(jwk(private, "k1"), jwk(EC_KEY if private is ED_KEY else ED_KEY, "k2"))
        assert (
            verifier.verify(jwt.encode(claims(), private, algorithm=algorithm, headers={"kid": "k1"})).user == "alice"
        )
        impostor = {EC_KEY: ec.generate_private_key(ec.SECP256R1()), ED_KEY: ed25519.Ed25519PrivateKey.generate()}
        forged = jwt.encode(claims(), impostor.get(private, OTHER_RSA_KEY), algorithm=algorithm, headers={"kid": "k1"})
        assert reason(verifier, forged) == "bad_signature"
        wrong_key = jwt.encode(claims(), private, algorithm=algorithm, headers={"kid": "k2"})
        assert reason(verifier, wrong_key) == "wrong_algorithm"  # k2 is of another type

    def test_the_header_cannot_choose_hmac_with_a_public_key(self) -> None:
        """The classic confusion: HS256 signed with the RSA public key as the secret."""
        public = jwk(RSA_KEY, "rsa")
        verifier = jwks_verifier(public)
        pem = RSA_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        assert reason(verifier, forge({"alg": "HS256", "kid": "rsa"}, claims(), pem)) == "wrong_algorithm"
        assert reason(verifier, forge({"alg": "none", "kid": "rsa"}, claims())) == "wrong_algorithm"
        es384 = jwt.encode(claims(), ec.generate_private_key(ec.SECP384R1()), algorithm="ES384", headers={"kid": "rsa"})
        assert reason(verifier, es384) == "wrong_algorithm"

    def test_a_token_without_kid_needs_a_single_key_or_the_secret(self) -> None:
        token = jwt.encode(claims(), EC_KEY, algorithm="ES256")
        assert jwks_verifier(jwk(EC_KEY, "only")).verify(token).user == "alice"
        assert reason(jwks_verifier(jwk(EC_KEY, "a"), jwk(ED_KEY, "b")), token) == "unknown_kid"
        both = KeySet(Key("HS256", SECRET), parse_jwks(json.dumps({"keys": [jwk(EC_KEY, "a")]})))
        assert reason(Verifier(lambda: both), token) == "wrong_algorithm"  # checked against the secret
        assert Verifier(lambda: both).verify(mint(SECRET, "bob", 60)).user == "bob"

    @pytest.mark.parametrize(
        ("document", "message"),
        [
            ("{", "is not JSON"),
            ('{"keys": []}', "is not a JWKS"),
            ({"keys": [{"kty": "EC"}]}, "every key needs a 'kid'"),
            ({"keys": [jwk(EC_KEY, "a"), jwk(EC_KEY, "a")]}, "kid 'a' appears twice"),
            ({"keys": [{**jwk(EC_KEY, "a"), "d": "secret"}]}, "private or symmetric"),
            ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}, "private or symmetric"),
            ({"keys": [jwk(EC_KEY, "a", alg="HS256")]}, "says alg 'HS256', its type verifies ES256"),
            ({"keys": [jwk(ec.generate_private_key(ec.SECP384R1()), "p384")]}, "expected EC P-256"),
            ({"keys": [jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024), "r")]}, "2048"),
            ({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "bad"}]}, "unusable"),
        ],
    )
    def test_doubtful_jwks_stop_start_up(self, document: Any, message: str) -> None:
        text = document if isinstance(document, str) else json.dumps(document)
        with pytest.raises(KeyConfigError, match=message):
            parse_jwks(text)

    def test_keys_rotate_by_editing_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps({"keys": [jwk(EC_KEY, "old"), jwk(ED_KEY, "new")]}))
        now = [0.0]
        files = KeyFiles(jwks_file=str(path), check_interval=1.0, clock=lambda: now[0])
        verifier = Verifier(files.current)
        old = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "old"})
        new = jwt.encode(claims(sub="bob"), ED_KEY, algorithm="EdDSA", headers={"kid": "new"})
        assert (verifier.verify(old).user, verifier.verify(new).user) == ("alice", "bob")

        path.write_text(json.dumps({"keys": [jwk(ED_KEY, "new")]}))
        assert verifier.verify(old).user == "alice"  # not looked at again within the interval
        now[0] = 1.5
        assert reason(verifier, old) == "unknown_kid"
        assert verifier.verify(new).user == "bob"

        path.write_text("{half written")  # a broken file keeps the keys in use
        now[0] = 3.0
        assert verifier.verify(new).user == "bob"


def test_bearer_header() -> None:
    assert bearer(None) is None
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    for bad in ("Basic abc", "Bearer", "abc", ""):
        with pytest.raises(AuthError) as refused:
            bearer(bad)
        assert refused.value.reason == "malformed"


def test_ttl_and_grant_syntax() -> None:
    assert [parse_ttl(t) for t in ("90", "90s", "15m", "1h", "7d")] == [90, 90, 900, 3600, 7 * 86400]
    for bad in ("0", "1y", "-1h", "h", "400d"):
        with pytest.raises(ValueError):
            parse_ttl(bad)
    for bad in ("admin", "message:", "message:a b"):
        with pytest.raises(ValueError):
            parse_grants([bad])


def test_refusals_never_contain_the_token() -> None:
    for token in (mint(OTHER_SECRET, "alice", 60), mint(SECRET, "alice", -3600), "x" * 5000, "garbage.token.here"):
        with pytest.raises(AuthError) as refused:
            secret_verifier().verify(token)
        assert token not in str(refused.value) and token[:20] not in str(refused.value)
