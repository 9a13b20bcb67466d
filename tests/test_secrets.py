"""Passwords in URLs are never shown: masked(), the errors for bad URLs, the CLI's output."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from melange._logs import masked
from melange._secrets import credentials_of, scrubbed, url_error, without_credentials
from melange.backends import from_url
from melange.backends.sqs import AWSBackend, LocalSQSBackend
from melange.exceptions import ConfigurationError
from melange.idempotency import store_from_url
from melange.saga import saga_store_from_url
from melange.testing import unique_name
from tests.servers.moto import MotoServer

ROOT = Path(__file__).resolve().parent.parent
HARD = "p/ss#w?rd@x:y"  # every character that ends a standard parse of the authority
ESCAPED = "%2Fsecret%40"
EXAMPLES = 2000 if os.environ.get("CI") == "true" else 200
examples = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- masked() ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"amqp://shop:{HARD}@rabbit:5672/orders", "amqp://shop:***@rabbit:5672/orders"),
        (f"amqps://shop:{HARD}@h1:5671,h2:5671/%2F", "amqps://shop:***@h1:5671,h2:5671/%2F"),
        (f"redis://:{HARD}@cache:6379/0?prefix=a", "redis://:***@cache:6379/0?prefix=a"),
        (f"rediss://u:{ESCAPED}@cache/0", "rediss://u:***@cache/0"),
        (f"postgresql://app:{HARD}@db:5432/sagas", "postgresql://app:***@db:5432/sagas"),
        (f"postgres://app:{ESCAPED}@db/sagas", "postgres://app:***@db/sagas"),
        (f"sqs://AKIDEXAMPLE:{HARD}@localhost:4566?region=x", "sqs://AKIDEXAMPLE:***@localhost:4566?region=x"),
        (f"sqs://AKIDEXAMPLE:{ESCAPED}@?region=eu-west-1", "sqs://AKIDEXAMPLE:***@?region=eu-west-1"),
        ("postgresql://app@db/sagas?password=s3cret&sslmode=require", "postgresql://app@db/sagas?password=***&sslmode=require"),
        ("host=db password='s3 cret' dbname=sagas", "host=db password=*** dbname=sagas"),
    ],
)  # fmt: skip
def test_the_password_is_masked_whatever_it_holds(url: str, shown: str) -> None:
    assert masked(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        "sqlite:///melange.db",
        "sqlite:////var/lib/a:b@c.db",  # no authority: the path is not credentials
        "sqs://?region=eu-west-1",
        "amqp://rabbit:5672/%2F",
        "redis://cache:6379/0",
        "postgresql://app@db/sagas",  # a user, no password
        "",
        "not a url",
    ],
)
def test_a_url_without_a_password_is_shown_as_it_is(url: str) -> None:
    assert masked(url) == url


user_names = st.text(
    alphabet=st.characters(blacklist_characters=":@/?#", blacklist_categories=["Cs"]), max_size=12
) | st.sampled_from(["shop", "AKIDEXAMPLE", "us%3Aer", ""])
hosts = st.sampled_from(["rabbit", "h1:5672,h2:5672", "127.0.0.1:1", "[::1]:6379", "", "db"])
tails = st.sampled_from(["", "/", "/%2F", "/0?prefix=melange:", "?region=us-east-1", "/db#x"])
schemes = st.sampled_from(["amqp", "amqps", "redis", "rediss", "postgresql", "postgres", "sqs"])


@examples
@given(schemes, user_names, st.text(min_size=4), hosts, tails)
def test_no_password_survives_masking(
    scheme: str, user: str, password: str, host: str, tail: str
) -> None:
    url = f"{scheme}://{user}:{password}@{host}{tail}"
    shown = f"{scheme}://{user}:***@{host}{tail}"
    assume(password not in shown)
    assert masked(url) == shown
    assert password not in masked(url)
    assert credentials_of(url) is not None
    assert without_credentials(url) == f"{scheme}://{host}{tail}"


@examples
@given(st.text())
def test_no_function_here_raises_on_any_text(text: str) -> None:
    masked(text)
    credentials_of(text)
    without_credentials(text)
    scrubbed(text, text)
    assert isinstance(url_error(text, ValueError(text)), ConfigurationError)


def test_credentials_are_percent_decoded() -> None:
    assert credentials_of(f"sqs://AK%3AID:{ESCAPED}@h:1") == ("AK:ID", "/secret@")
    assert credentials_of(f"sqs://AKID:{HARD}@h:1") == ("AKID", HARD)
    assert credentials_of("sqs://h:1") is None


def test_a_drivers_message_loses_the_password_raw_and_decoded() -> None:
    url = f"redis://:{ESCAPED}@cache/0"
    said = scrubbed(f"bad {ESCAPED} or /secret@ here", url)
    assert said == "bad *** or *** here"


# -- errors for bad URLs -----------------------------------------------------------------------

PASSWORD = "Sekr3t-pw"


def raised_by(build: Callable[[str], Any], url: str) -> ConfigurationError:
    try:
        build(url).close()
    except ConfigurationError as e:
        error = e
    else:
        pytest.fail(f"{url} was taken")
    # No driver's exception (whose message may hold the password) is chained to be printed.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    return error


@pytest.mark.parametrize(
    ("build", "url"),
    [
        (from_url, f"amqp://shop:{PASSWORD}@127.0.0.1:abc/%2F"),
        (from_url, f"amqp://shop:{PASSWORD}@127.0.0.1:99999/%2F"),
        (from_url, f"amqp://shop:{PASSWORD}@h1,h2:abc/%2F"),
        (from_url, f"amqp://shop:{PASSWORD}@127.0.0.1/%2F?prefetch=many"),
        (from_url, f"amqp://shop:[{PASSWORD}@127.0.0.1/%2F"),
        (from_url, f"sqs://AKIDEXAMPLE:{PASSWORD}@127.0.0.1:abc"),
        (from_url, f"sqs://AKIDEXAMPLE:{PASSWORD}@127.0.0.1:1?regoin=x"),
        (from_url, f"sqs://AKIDEXAMPLE:{PASSWORD}@127.0.0.1:1?profile=dev"),
        (from_url, f"sqs://:{PASSWORD}@127.0.0.1:1"),
        (store_from_url, f"redis://:{PASSWORD}@127.0.0.1:abc/0"),
        (store_from_url, f"rediss://u:{PASSWORD}@127.0.0.1:1/0?lease_seconds=long"),
        (store_from_url, f"redis://:{PASSWORD}@127.0.0.1:1/0?socket_timeout=1"),
        (saga_store_from_url, f"postgresql://app:{PASSWORD}@127.0.0.1:1/db?nosuch=1"),
        (saga_store_from_url, f"postgres://app:{PASSWORD}@127.0.0.1:1/db?sslmode"),
    ],
)
def test_a_bad_url_is_reported_masked(build: Callable[[str], Any], url: str) -> None:
    error = raised_by(build, url)
    assert PASSWORD not in str(error)
    assert masked(url).split("?")[0] in str(error)


@pytest.mark.parametrize(
    ("build", "url"),
    [
        (from_url, "amqp://shop:{}@127.0.0.1:5672/%2F"),
        (from_url, "amqps://shop:{}@h1:5671,h2:5671/%2F"),
        (store_from_url, "redis://:{}@127.0.0.1:6379/0"),
        (store_from_url, "rediss://u:{}@127.0.0.1:6379/0?prefix=x"),
        (saga_store_from_url, "postgresql://app:{}@127.0.0.1:1/db"),
    ],
)
@pytest.mark.parametrize("password", ["Sek/r3t-pw", "Sek#r3t-pw", "Sek?r3t=pw", "p/ss#w?rd@x:y"])
def test_an_unencoded_delimiter_is_refused_with_the_fix_not_a_piece_of_it(
    build: Callable[[str], Any], url: str, password: str
) -> None:
    error = raised_by(build, url.format(password))
    # The driver read a piece of the password as a port or a query: no piece is quoted.
    assert not any(piece in str(error) for piece in ("Sek", "r3t", "p/ss", "w?rd", "rd@x"))
    assert "percent-encode" in str(error)


# -- sqs:// credentials ------------------------------------------------------------------------


@pytest.mark.sqs
def test_sqs_credentials_in_the_url_are_used(moto: MotoServer) -> None:
    url = (
        f"sqs://AKIDEXAMPLE:wJal/rXUtn%2BFEMI{ESCAPED}@{moto.host}:{moto.port}?region={moto.region}"
    )
    sent: list[str] = []
    with from_url(url) as backend:
        assert isinstance(backend, LocalSQSBackend)
        client = backend.sqs_client

        def signed(request: Any, **_: Any) -> None:
            sent.append(request.headers["Authorization"].decode())

        client.meta.events.register("before-send", signed)
        queue, _ = backend.declare_queue(unique_name("q"))
        assert queue.obj.startswith(moto.endpoint)
        secret = client._request_signer._credentials.get_frozen_credentials().secret_key
    assert secret == "wJal/rXUtn+FEMI/secret@"
    assert sent
    assert all("Credential=AKIDEXAMPLE/" in header for header in sent)


def test_sqs_credentials_without_a_host_are_for_aws() -> None:
    backend = from_url(f"sqs://AKIDEXAMPLE:{ESCAPED}@?region=eu-west-1")
    assert type(backend) is AWSBackend
    frozen = backend.sqs_client._request_signer._credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key) == ("AKIDEXAMPLE", "/secret@")
    assert backend.sqs_client.meta.endpoint_url == "https://sqs.eu-west-1.amazonaws.com"


def test_half_sqs_credentials_or_credentials_and_a_profile_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="both the access key id and the secret"):
        from_url("sqs://AKIDEXAMPLE@127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="not both"):
        from_url(f"sqs://AKIDEXAMPLE:{PASSWORD}@?profile=dev")


# -- the CLI -----------------------------------------------------------------------------------


def melange(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "melange", *arguments],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


CLOSED = "127.0.0.1:1"


@pytest.mark.parametrize(
    "backend",
    [
        f"amqp://shop:{PASSWORD}@{CLOSED}/%2F?operation_timeout=1",
        f"amqp://shop:{PASSWORD}@{CLOSED},127.0.0.1:2/%2F?operation_timeout=1",
        f"amqp://shop:Sek/{PASSWORD}@{CLOSED}/%2F",
        f"sqs://AKIDEXAMPLE:{PASSWORD}@{CLOSED}?max_attempts=1&connect_timeout=1",
        f"sqs://AKIDEXAMPLE:Sek/{PASSWORD}@127.0.0.1:abc",
    ],
)
@pytest.mark.parametrize(
    "command", [["stats", "paid"], ["worker", "tests.test_cli:Refuses", "--queue", "paid"]]
)
def test_the_cli_never_prints_a_backend_password(backend: str, command: list[str]) -> None:
    result = melange("--backend", backend, *command)
    assert result.returncode == 2
    assert result.stderr.rstrip().splitlines()[-1].startswith("melange: ")
    assert PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("store", "status"),
    [
        (f"redis://:{PASSWORD}@{CLOSED}/0", 0),  # nothing to claim: idles out, names the store
        (f"redis://:Sek/{PASSWORD}@{CLOSED}/0", 2),
        (f"redis://:{PASSWORD}@{CLOSED}/0?lease_seconds=long", 2),
    ],
)
def test_the_cli_never_prints_an_idempotency_password(
    tmp_path: Path, store: str, status: int
) -> None:
    result = melange(
        "--backend", f"sqlite:///{tmp_path}/b.db",
        "worker", "tests.test_cli:Refuses", "--queue", "paid",
        "--idempotency", store, "--idle-timeout", "0",
    )  # fmt: skip
    assert result.returncode == status, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    if status == 0:
        assert f"idempotency redis://:***@{CLOSED}/0" in result.stderr


def test_the_cli_never_prints_a_saga_store_password() -> None:
    for store in (
        f"postgresql://app:{PASSWORD}@{CLOSED}/db",
        f"postgresql://app:Sek#{PASSWORD}@db",
    ):
        result = melange("saga", "list", "OrderSaga", "--store", store)
        assert result.returncode == 2
        assert PASSWORD not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
