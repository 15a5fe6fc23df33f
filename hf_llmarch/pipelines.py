"""`pipeline("text2text-generation")` for encoder-decoders. transformers 5 removed the task (it points
users to chat models); our seq2seq families (T5, BART, RedLLM) need it, so importing hf_llmarch
registers this small pipeline under the old name: text in, `generate()`, decoded text out."""

from transformers import AutoModelForSeq2SeqLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from . import compat

TASK = "text2text-generation"


class Text2TextGenerationPipeline(Pipeline):
    """Each input string is encoded, decoded by `model.generate(**generate_kwargs)` and returned as
    `{"generated_text": ...}` (special tokens skipped)."""

    def _sanitize_parameters(self, **generate_kwargs):
        return {}, generate_kwargs, {}

    def preprocess(self, text: str):
        if not isinstance(text, str):
            raise ValueError(f"{TASK} takes a string (or a list of strings), got {type(text).__name__}")
        return self.tokenizer(text, return_tensors="pt")

    def _forward(self, model_inputs, **generate_kwargs):
        return {"output_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs):
        return [{"generated_text": self.tokenizer.decode(ids, skip_special_tokens=True)} for ids in model_outputs["output_ids"]]


def register() -> None:
    compat.restore_pipeline_task(TASK)
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=Text2TextGenerationPipeline, pt_model=AutoModelForSeq2SeqLM, type="text")
