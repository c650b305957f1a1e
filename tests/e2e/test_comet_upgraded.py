"""The demo Comet chat through two gateways, the hop on websocket, long-poll, and switched.

::

    LegacyChatClient x3 -> hopgate client ══ HopPath ══> hopgate server -> Comet chat origin
                                       (see ``tests.e2e``)               (gateway.demo.comet)

Several unmodified legacy chat clients hold ``GET /poll`` and ``POST /send``
numbered messages through a client gateway while the hop to the server
gateway runs as a WebSocket session, a long-poll session, or switches under
them (long-poll, upgraded, black-holed and demoted, upgraded again).  The
chat's ids are consecutive, so each client's view shows directly whether a
message was lost, duplicated or reordered; the texts show each sender's own
order; the origin's message count shows no ``/send`` reached it twice.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.demo.comet import ROOM, make_app
from tests.conftest import MakeOrigin

from .harness import (
    HOLD,
    VARIANTS,
    Chat,
    Gateways,
    Variant,
    count_sends,
    gateways_fixture,  # noqa: F401  (the ``gateways`` fixture)
    hop_path,
    run_chat,
)

pytestmark = pytest.mark.timeout(60)

SHORT = Chat(messages=20)
#: Long enough for the switched variant's four switches to happen mid-stream.
LONG = Chat(messages=35)


@pytest.mark.parametrize("variant", VARIANTS)
async def test_comet_chat_over_a_hop_session(
    variant: Variant, make_origin: MakeOrigin, gateways: Gateways
) -> None:
    chat = LONG if variant == "switched" else SHORT
    app = make_app(hold=HOLD)
    room, sends = app[ROOM], count_sends(app)
    path = await hop_path(variant, gateways, await make_origin(app))
    path.progress = lambda: (room.last_id, chat.total)
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(run_chat(path.client.url, chat))
        tasks.create_task(path.switch())
    assert running.result().problems(room.last_id, sends[0]) == []
    await path.check()
