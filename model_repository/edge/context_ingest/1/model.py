"""Triton shim for `context_ingest`; the logic is python_backends.serving.context_ingest_step.ContextIngestStep."""

from python_backends.serving.context_ingest_step import ContextIngestStep


class TritonPythonModel:
    def initialize(self, args):
        self.step = ContextIngestStep(args)

    async def execute(self, requests):
        return await self.step.execute(requests)
