"""transformers on CPU: the fallback backend, and the one tests run with a real model.

Batches prompts with left padding; greedy decoding when temperature is 0, else seeded sampling.
Cost: a 135M-parameter model answers a short grading prompt in roughly 0.3-1 s per document on
one core; use vLLM for anything beyond samples.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from engines.inference.base import Generation, InferenceBackend, InferenceConfig, Messages, SamplingParams
from engines.inference.models import resolve_model


class TransformersBackend(InferenceBackend):
    def __init__(self, config: InferenceConfig, **_: Any):
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()  # one bar per worker is noise in run logs
        self.config = config
        self._torch = torch
        if config.threads:
            torch.set_num_threads(config.threads)
        path = resolve_model(config.model)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.model.eval()
        self._candidate_ids: dict[str, list[int]] = {}
        self._constraint_cache: Any = None  # compiled regex constraints (constrain.py), made on first use

    def _encode_chats(self, conversations: list[Messages]) -> Any:
        texts = [self.tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
        return self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def chat(self, conversations: list[Messages], params: SamplingParams) -> list[Generation]:
        return self._generate(conversations, params, [params.regex] * len(conversations))

    def chat_each(self, conversations: list[Messages], params: list[SamplingParams]) -> list[Generation]:
        """Batches conversations whose params differ only in their constraint (a ProX program's
        regex names the segment's line count) or, under greedy decoding, their seed: the
        constraint is applied per row."""
        if len(params) != len(conversations):
            raise ValueError(f"{len(params)} sampling parameters for {len(conversations)} conversations")
        groups: dict[SamplingParams, list[int]] = {}
        for i, p in enumerate(params):
            key = p.model_copy(update={"regex": None, **({"seed": 0} if p.temperature == 0 else {})})
            groups.setdefault(key, []).append(i)
        out: list[Generation | None] = [None] * len(conversations)
        for key, idx in groups.items():
            gens = self._generate([conversations[i] for i in idx], key, [params[i].regex for i in idx])
            for i, g in zip(idx, gens):
                out[i] = g
        return [g for g in out if g is not None]

    def _constraints(self) -> Any:
        if self._constraint_cache is None:
            from engines.inference.constrain import ConstraintCache
            eos = self.model.generation_config.eos_token_id
            eos_ids = [*(eos if isinstance(eos, list) else [eos]), self.tok.eos_token_id]
            self._constraint_cache = ConstraintCache(self.tok, [i for i in eos_ids if i is not None],
                                                     int(self.model.get_output_embeddings().weight.shape[0]))
        return self._constraint_cache

    def _generate(self, conversations: list[Messages], params: SamplingParams,
                  regexes: list[str | None]) -> list[Generation]:
        torch = self._torch
        out: list[Generation] = []
        for i in range(0, len(conversations), self.config.batch_size):
            batch = conversations[i:i + self.config.batch_size]
            enc = self._encode_chats(batch)
            kwargs: dict[str, Any] = {"max_new_tokens": params.max_tokens, "pad_token_id": self.tok.pad_token_id}
            if params.temperature > 0:
                torch.manual_seed(params.seed)
                kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            rows = regexes[i:i + self.config.batch_size]
            procs: list[Any] = []
            if params.frequency_penalty != 0.0:
                from engines.inference.constrain import FrequencyPenalty
                procs.append(FrequencyPenalty(params.frequency_penalty, enc["input_ids"].shape[1]))
            if any(r is not None for r in rows):  # last: a penalty may not revive a forbidden token
                from engines.inference.constrain import RegexLogitsProcessor
                cache = self._constraints()
                procs.append(RegexLogitsProcessor([cache.get(r) if r is not None else None for r in rows],
                                                  enc["input_ids"].shape[1]))
            if procs:
                from transformers import LogitsProcessorList
                kwargs["logits_processor"] = LogitsProcessorList(procs)
            with torch.inference_mode():
                gen = self.model.generate(**enc, **kwargs)  # type: ignore[misc]
            new = gen[:, enc["input_ids"].shape[1]:]
            for row, mask in zip(new, enc["attention_mask"]):
                ids = row.tolist()
                eos = self.tok.eos_token_id
                finished = eos in ids or self.tok.pad_token_id in ids
                text = str(self.tok.decode(row, skip_special_tokens=True))
                for s in params.stop:
                    if s in text:
                        text, finished = text[: text.index(s)], True
                n_new = sum(1 for t in ids if t not in (eos, self.tok.pad_token_id))
                out.append(Generation(text=text, finish_reason="stop" if finished else "length",
                                      prompt_tokens=int(mask.sum()), completion_tokens=n_new))
        return out

    def _ids_for(self, candidate: str) -> list[int]:
        if candidate not in self._candidate_ids:
            ids = set()
            for form in {candidate, candidate.lower(), candidate.capitalize(), " " + candidate,
                         " " + candidate.lower(), " " + candidate.capitalize()}:
                toks = self.tok.encode(form, add_special_tokens=False)
                if len(toks) == 1:
                    ids.add(toks[0])
            self._candidate_ids[candidate] = sorted(ids)
        return self._candidate_ids[candidate]

    def next_token_logprobs(self, conversations: list[Messages], candidates: list[str]) -> list[dict[str, float]]:
        torch = self._torch
        out: list[dict[str, float]] = []
        for i in range(0, len(conversations), self.config.batch_size):
            enc = self._encode_chats(conversations[i:i + self.config.batch_size])
            with torch.inference_mode():
                # Only the last position is needed (left padding makes it the real last token).
                logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :]
            logp = torch.log_softmax(logits.float(), dim=-1)
            for row in logp:
                res = {}
                for c in candidates:
                    ids = self._ids_for(c)
                    res[c] = float(torch.logsumexp(row[ids], dim=0)) if ids else float("-inf")
                out.append(res)
        return out

    def text_logprobs(self, texts: list[str]) -> list[np.ndarray]:
        torch = self._torch
        bos = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        out: list[np.ndarray] = []
        for text in texts:
            ids = [bos] + self.tok.encode(text, add_special_tokens=False)
            if len(ids) == 1:
                out.append(np.zeros(0))
                continue
            t = torch.tensor([ids])
            with torch.inference_mode():
                logits = self.model(input_ids=t).logits[0, :-1].float()
            lp = torch.log_softmax(logits, dim=-1).gather(1, t[0, 1:].unsqueeze(1)).squeeze(1)
            out.append(lp.numpy().astype(np.float64))
        return out

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(x) for x in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def truncate(self, text: str, max_tokens: int) -> str:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= max_tokens:
            return text
        return text[: enc["offset_mapping"][max_tokens - 1][1]]
