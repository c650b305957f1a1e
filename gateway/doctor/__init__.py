"""``hopgate doctor URL``: walk the path to a gateway step by step and say what to change.

``wire`` speaks raw HTTP/1.1 (h11) and WebSocket (wsproto) on asyncio
streams, so the doctor sees exactly what the path answers; ``hop`` drives the
hop session and tunnel cores over those raw carriers; ``probe`` runs the
steps and collects ``Findings``; ``verdict`` (pure) turns findings into the
step lines, the verdict and the advice; ``command`` is the CLI.
"""
