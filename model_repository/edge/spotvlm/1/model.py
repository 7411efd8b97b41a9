"""Triton shim for `spotvlm`; the logic is python_backends.serving.spotvlm_step.SpotVLMStep."""

from python_backends.serving.spotvlm_step import SpotVLMStep


class TritonPythonModel:
    def initialize(self, args):
        self.step = SpotVLMStep(args)

    async def execute(self, requests):
        return await self.step.execute(requests)

    def finalize(self):
        self.step.close()
