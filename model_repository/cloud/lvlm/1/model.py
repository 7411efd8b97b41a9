"""Triton shim for the cloud `lvlm`; the logic is python_backends.serving.lvlm_step.LvlmStep."""

from python_backends.serving.lvlm_step import LvlmStep


class TritonPythonModel:
    def initialize(self, args):
        self.step = LvlmStep(args)

    def execute(self, requests):
        return self.step.execute(requests)
