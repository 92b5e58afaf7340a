"""Deployments assembled from recorded messages, without a server: who, what, where, each
host's outcome; forgeries, malformed entries and foreign actions flagged or left out, never
a crash; the streams' configuration and the reply subjects of a read."""

from __future__ import annotations

import json

import pytest

from fleet_core.deploy.history import (
    HistoryBook,
    Recorded,
    Retention,
    parse_timestamp,
    reaches,
    read_reply_subject,
    records_from_jobs,
    select,
    stream_config,
    stream_subjects,
)
from fleet_core.keys import generate_seed
from fleet_core.protocol.messages import HostInfo, JobPhase, JobSummary, StatusKind
from fleet_core.protocol.signing import sign_request
from fleet_core.protocol.subjects import Tier
from fleet_core.setup.nats_config import (
    DeployerEntry,
    HostEntry,
    Inventory,
    deployer_permissions,
    nats_config,
)

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

SEED = generate_seed()
ID = "d" * 32


class Log:
    """Recorded messages in stream order, one second apart."""

    def __init__(self) -> None:
        self.entries: list[Recorded] = []

    def add(self, subject: str, body: object, *, raw: bytes | None = None) -> Log:
        data = raw if raw is not None else json.dumps(body).encode()
        seq = len(self.entries) + 1
        self.entries.append(Recorded(seq=seq, subject=subject, data=data, time=1000.0 + seq))
        return self

    def request(
        self,
        subject: str,
        *,
        action: str = "switch",
        revision: str = "master",
        request_id: str = ID,
        signed: bool = True,
    ) -> Log:
        body: dict[str, object] = {
            "action": action,
            "revision": revision,
            "reply_to": f"deploy.responses.{request_id}",
            "id": request_id,
            "bind": True,
        }
        if signed:
            signature = sign_request(
                SEED.reveal(),
                request_id=request_id,
                subject=subject,
                action=action,
                revision=revision,
                now=1000.0,
            )
            body |= {
                "signer": signature.signer,
                "signed_at": signature.signed_at,
                "signature": signature.signature,
            }
        return self.add(subject, body)

    def status(self, host: str, status: str, *, tier: str = "test", **fields: object) -> Log:
        body = {"hostname": host, "status": status, "request_id": ID, "tier": tier, **fields}
        return self.add(f"deploy.responses.{ID}.{tier}.{host}", body)

    def book(self, name: str | None = None) -> HistoryBook:
        names = {SEED.public_key: name} if name is not None else {}
        return HistoryBook(names=names).extend(self.entries)


class TestAssembly:
    def test_a_deploy_becomes_one_record_with_each_hosts_final_status(self) -> None:
        """Request, accepted, started, final: one record, signer verified and named,
        duration from the request to the last final status."""
        log = Log().request("deploy.test.all")
        for host in ("web1", "web2"):
            log.status(host, "accepted").status(host, "started")
        log.status("web1", "completed", message="done")
        log.status("web2", "failed", error="build_failed", log_tail=["error: \x1b[31mboom"])
        (record,) = log.book(name="ci").records()
        assert record.id == ID and record.targets == ["deploy.test.all"]
        assert record.signature == "verified" and record.signer_name == "ci"
        assert record.counts == {"completed": 1, "failed": 1}
        assert record.duration_s == 6.0  # request at seq 1, last final at seq 7
        web2 = record.hosts[1]
        assert web2.error == "build_failed"
        assert web2.log_tail == ["error: \\x1b[31mboom"]  # escaped, never raw

    def test_a_rollouts_batches_are_one_deployment_with_every_target(self) -> None:
        """A rollout publishes its id once per host subject: one record, each subject."""
        log = Log().request("deploy.test.web1").status("web1", "completed")
        log.request("deploy.test.web2").status("web2", "completed")
        (record,) = log.book().records()
        assert record.targets == ["deploy.test.web1", "deploy.test.web2"]
        assert record.ok

    def test_a_host_still_running_has_no_duration(self) -> None:
        log = Log().request("deploy.test.web1").status("web1", "started")
        (record,) = log.book().records()
        assert record.counts == {"running": 1}
        assert record.duration_s is None and not record.ok

    def test_a_lost_final_status_is_taken_from_a_job_querys_answer(self) -> None:
        """The answer to a job query (a bound discovery answer with ``job``) fills in the
        outcome of a host whose final status never reached the stream."""
        log = Log().request("deploy.test.web1").status("web1", "started")
        answer = HostInfo(
            hostname="web1",
            tier="test",
            job=JobSummary(request_id=ID, phase=JobPhase.FINISHED, status=StatusKind.COMPLETED),
        )
        log.add("deploy.responses.q1.test.web1", answer.model_dump(mode="json"))
        (record,) = log.book().records()
        (host,) = record.hosts
        assert (host.status, host.final, host.source) == ("completed", True, "job_query")

    def test_a_cancel_marks_its_deployment_and_logs_requests_are_not_history(self) -> None:
        """A cancel (its revision is the id it stops) marks that deployment; a request for
        a job's log is no deployment at all, and the answers to either (a log's chunks)
        are no deployment's statuses."""
        log = Log().request("deploy.test.web1").status("web1", "failed", error="cancelled")
        log.request("deploy.test.web1", action="cancel", revision=ID, request_id="c" * 32)
        log.add(
            "deploy.test.web1",
            {"action": "logs", "revision": ID, "reply_to": "deploy.responses.l1", "id": "l1"},
        )
        chunk = {"hostname": "web1", "tier": "test", "request_id": "l1", "status": "completed"}
        log.add("deploy.responses.l1.test.web1", {**chunk, "text": "a line", "offset": 0})
        log.add(f"deploy.responses.{'c' * 32}.test.web1", {**chunk, "request_id": "c" * 32})
        records = log.book().records()
        assert [r.id for r in records] == [ID]
        assert records[0].cancel_requested


class TestUntrusted:
    def test_a_status_that_contradicts_its_subject_is_flagged_not_believed(self) -> None:
        log = Log().request("deploy.test.web1")
        log.add(f"deploy.responses.{ID}.test.web1", {"hostname": "web9", "status": "completed"})
        log.add(
            f"deploy.responses.{ID}.test.web1",
            {"hostname": "web1", "status": "completed", "request_id": "other"},
        )
        (record,) = log.book().records()
        assert record.hosts == [] and record.flagged_count == 2

    def test_a_tampered_request_is_flagged_and_its_signer_not_claimed(self) -> None:
        """A request whose revision was changed after signing: signature 'bad', no signer."""
        log = Log().request("deploy.test.web1")
        body = json.loads(log.entries[0].data)
        body["revision"] = "evil"
        log.entries[0] = Recorded(1, "deploy.test.web1", json.dumps(body).encode(), 1001.0)
        (record,) = log.book().records()
        assert record.signature == "bad" and record.signer is None
        assert record.flagged_count == 1

    def test_an_unsigned_request_says_so(self) -> None:
        (record,) = Log().request("deploy.test.web1", signed=False).book().records()
        assert record.signature == "unsigned" and record.signer is None

    def test_answers_to_a_request_of_an_unknown_action_are_no_deployment(self) -> None:
        """A request this release cannot parse (a newer action) is counted, and what the
        hosts answer it is not taken for a deployment of its own."""
        log = Log().add(
            "deploy.test.web1",
            {"action": "frobnicate", "reply_to": "deploy.responses.n1", "id": "n1"},
        )
        log.add(
            "deploy.responses.n1.test.web1",
            {"hostname": "web1", "status": "rejected", "error": "invalid_action"},
        )
        book = log.book()
        assert book.records() == [] and book.flagged == 1

    @pytest.mark.parametrize(
        "raw",
        [b"", b"not json", b"[1, 2]", b'{"reply_to": "elsewhere"}', b"\xff\xfe", b"{" * 5000],
    )
    def test_malformed_entries_are_counted_never_raised(self, raw: bytes) -> None:
        book = HistoryBook()
        book.add(Recorded(1, "deploy.test.web1", raw))
        book.add(Recorded(2, f"deploy.responses.{ID}.test.web1", raw))
        book.add(Recorded(3, "somewhere.else", raw))
        assert book.records() == []
        assert book.flagged >= 1


class TestSelection:
    def test_select_by_target_host_and_limit(self) -> None:
        """A host's subject also finds the group deploys that reached it; --host too."""
        group = Log().request("deploy.test.all").status("web1", "completed").book().records()
        other = Log()
        other.request("deploy.test.web2", request_id="e" * 32)
        single = other.book().records()
        records = group + single
        assert [r.id for r in select(records, target="deploy.test.web1")] == [ID]
        assert [r.id for r in select(records, target="deploy.test.web2")] == ["e" * 32]
        assert [r.id for r in select(records, host="web2")] == ["e" * 32]
        assert len(select(records, limit=1)) == 1
        assert select(records, target="deploy.prod.all") == []

    def test_job_records_become_deployments_across_hosts(self) -> None:
        """Without JetStream: each host's job summaries, grouped by request id."""

        def info(host: str, status: StatusKind) -> HostInfo:
            job = JobSummary(
                request_id=ID,
                phase=JobPhase.FINISHED,
                status=status,
                action="switch",
                revision="v1",
                signer=SEED.public_key,
                started_at=10.0,
                finished_at=12.5,
            )
            return HostInfo(hostname=host, tier="test", recent_jobs=[job])

        records = records_from_jobs(
            [info("web1", StatusKind.COMPLETED), info("web2", StatusKind.FAILED)],
            names={SEED.public_key: "ci"},
        )
        (record,) = records
        assert record.revision == "v1" and record.signer_name == "ci"
        assert record.counts == {"completed": 1, "failed": 1} and record.duration_s == 2.5


class TestStreams:
    def test_each_tier_captures_its_requests_and_bound_answers_only(self) -> None:
        assert stream_subjects(Tier.PROD) == ("deploy.prod.>", "deploy.responses.*.prod.*")
        config = stream_config(Tier.TEST, Retention(max_age=60, max_msgs=10, replicas=3))
        assert config["name"] == "FLEET_HISTORY_TEST"
        assert config["no_ack"] is True  # no PubAck on a deploy request's reply subject
        assert config["allow_direct"] is True
        assert (config["max_age"], config["max_msgs"], config["num_replicas"]) == (
            60 * 10**9,
            10,
            3,
        )

    def test_a_prod_read_answers_past_the_stream_and_under_the_test_keys_deny(self) -> None:
        subject = read_reply_subject(Tier.PROD, "x")
        assert len(subject.split(".")) == 6  # the prod stream captures 5 tokens
        assert subject.startswith("deploy.responses.x.prod.")  # denied to the test key
        assert read_reply_subject(Tier.TEST, "x") == "deploy.responses.x"

    def test_the_test_key_may_use_no_jetstream_api(self) -> None:
        """JetStream answers on any reply subject a request names: one API subject would let
        the test key have the server publish anywhere (tests/test_history_attacks.py)."""
        assert not [s for s in deployer_permissions("test").publish if "$JS" in s]
        assert "$JS.API.>" in deployer_permissions("admin").publish
        assert not [s for s in deployer_permissions("test", "homelab").publish if "$JS" in s]

    def test_nats_config_writes_jetstream_under_bound_only(self) -> None:
        inventory = Inventory(
            hosts=(HostEntry("web1", Tier.TEST, SEED.public_key),),
            deployers=(DeployerEntry("ci", "admin", generate_seed().public_key),),
        )
        bound = nats_config(inventory, source="x", jetstream_dir="/var/lib/nats/js")
        assert 'store_dir: "/var/lib/nats/js"' in bound
        homelab = nats_config(inventory, source="x", layout="homelab", jetstream_dir="/x")
        assert "jetstream" not in homelab
        assert "jetstream" not in nats_config(inventory, source="x")

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-12-07T18:25:13.515108685Z", 1796667913.515108),
            ("2026-12-07T18:25:13Z", 1796667913.0),
            ("", None),
            (None, None),
            ("yesterday", None),
        ],
    )
    def test_timestamps(self, text: str | None, expected: float | None) -> None:
        found = parse_timestamp(text)
        assert found == pytest.approx(expected) if expected is not None else found is None


@pytest.mark.parametrize(
    ("subject", "reached"),
    [
        ("deploy.test.web1", True),
        ("deploy.test.all", True),
        ("deploy.test.role.web", True),
        ("deploy.test.role.db", False),
        ("deploy.test.web2", False),
        ("deploy.prod.web1", False),
        ("deploy.prod.all", False),
        ("deploy.test", False),
        ("build.test.web1", False),
    ],
)
def test_what_a_recorded_request_reached(subject: str, reached: bool) -> None:
    """A request reached a host on its own subject, its tier's ``all`` or its role's:
    what ``status`` looks for in the history (``last_deploy``)."""
    web1 = HostInfo(hostname="web1", tier="test", role="web")
    assert reaches(subject, [web1]) is reached
