"""The `guestinfo.arcbake.nodes-delete` request: `ID:name,name`, its id echoed in the server's status."""

from __future__ import annotations

import pytest

from firstboot.contract import NodesDeleteRequest, Status
from firstboot.rotate import carry_out_nodes_delete, nodes_delete_report, pending_nodes_delete


def test_request_round_trips_and_its_id_is_reported() -> None:
    request = NodesDeleteRequest.parse(" 0a1b2c3d:agent-1, agent-2 ")
    assert (request.request_id, request.names) == ("0a1b2c3d", ["agent-1", "agent-2"])
    assert NodesDeleteRequest.parse(request.to_value()) == request
    deleted: list[str] = []
    carry_out_nodes_delete(request, deleted.append)
    assert deleted == ["agent-1", "agent-2"]
    status = Status.model_validate({"state": "done", **nodes_delete_report(request)})
    assert (status.nodes_delete_id, status.nodes_deleted) == ("0a1b2c3d", ["agent-1", "agent-2"])


@pytest.mark.parametrize(
    "value",
    [
        "agent-1",  # no id: a name alone cannot tell this request from an earlier one
        "0a1b2c3d:",  # no names
        "0A1B2C3D:agent-1",  # not lowercase hex
        "0a1b:agent-1",  # id too short
        "0a1b2c3d:agent 1",  # not a host name
        "0a1b2c3d:a;rm -rf /",
    ],
)
def test_invalid_requests_are_refused_and_ignored(value: str) -> None:
    with pytest.raises(ValueError, match="not `ID:`"):
        NodesDeleteRequest.parse(value)
    assert pending_nodes_delete(value) is None


@pytest.mark.parametrize("value", [None, "", "---", "  "])
def test_no_request(value: str | None) -> None:
    assert pending_nodes_delete(value) is None


def test_status_refuses_a_bad_id() -> None:
    with pytest.raises(ValueError):
        Status.model_validate({"state": "done", "nodes_delete_id": "x" * 8})
