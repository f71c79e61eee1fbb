"""Prompt formats for MCQA: letter format (options lettered, answer is a letter) and cloze format (answer is the
option text), with k-shot demonstrations and an optional chat template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .items import MCQAItem


@dataclass(frozen=True)
class LetterFormat:
    """How a letter-format prompt is rendered.

    `template` fields: `{context}` (the passage block, empty when the item has none), `{question}`, `{options}` (one
    `option_template` line per choice), `{subject}`. The rendered prompt must end right before the answer letter;
    the letter is scored as the next token (" A" after "Answer:").

    Example:
        >>> item = MCQAItem("q", "2 + 2 = ?", ("3", "4"), gold=1)
        >>> print(LetterFormat().render(item))
        Question: 2 + 2 = ?
        A. 3
        B. 4
        Answer:
    """

    template: str = "{context}Question: {question}\n{options}\nAnswer:"
    option_template: str = "{letter}. {text}"
    context_template: str = "{context}\n\n"
    header: str = ""  # e.g. "The following are multiple choice questions about {subject}.\n\n"
    fewshot_separator: str = "\n\n"

    def render(self, item: MCQAItem) -> str:
        options = "\n".join(self.option_template.format(letter=l, text=t) for l, t in zip(item.letters, item.choices))
        context = self.context_template.format(context=item.context) if item.context else ""
        return self.template.format(context=context, question=item.question, options=options,
                                    subject=item.subject or "")

    def prompt(self, item: MCQAItem, fewshot: Sequence[MCQAItem] = ()) -> str:
        """The full prompt: header, k solved demonstrations (" <gold letter>" after each), then the item."""
        parts = []
        for shot in fewshot:
            if shot.gold is None:
                raise ValueError(f"Few-shot demonstration {shot.id!r} has no gold label.")
            parts.append(f"{self.render(shot)} {shot.gold_letter}")
        parts.append(self.render(item))
        header = self.header.format(subject=item.subject or "") if self.header else ""
        return header + self.fewshot_separator.join(parts)


@dataclass(frozen=True)
class ClozeFormat:
    """Cloze format: the context is the question, each option text is a continuation (lm-eval's acc / acc_norm).

    Example:
        >>> item = MCQAItem("q", "The sky is", ("blue", "green"), gold=0)
        >>> ClozeFormat().context(item), ClozeFormat().continuations(item)
        ('Question: The sky is\\nAnswer:', [' blue', ' green'])
    """

    template: str = "{context}Question: {question}\nAnswer:"
    context_template: str = "{context}\n\n"
    continuation_prefix: str = " "

    def context(self, item: MCQAItem) -> str:
        context = self.context_template.format(context=item.context) if item.context else ""
        return self.template.format(context=context, question=item.question, subject=item.subject or "")

    def continuations(self, item: MCQAItem) -> list[str]:
        return [self.continuation_prefix + choice for choice in item.choices]


@dataclass(frozen=True)
class OptionsFormat(ClozeFormat):
    """Options listed in the prompt, answered with an option's text (no letters): the cloze answer, with the options
    in view. A model sampled freely in the plain cloze format rarely reproduces an option's text (it does not know
    them); here it can copy one, so sampled answers map to options (Confidence@k on answer text).

    Example:
        >>> item = MCQAItem("q", "The sky is", ("blue", "green"), gold=0)
        >>> print(OptionsFormat().context(item))
        Question: The sky is
        Options:
        - blue
        - green
        Answer:
        >>> OptionsFormat().continuations(item)
        [' blue', ' green']
    """

    template: str = "{context}Question: {question}\nOptions:\n{options}\nAnswer:"
    option_template: str = "- {text}"

    def context(self, item: MCQAItem) -> str:
        context = self.context_template.format(context=item.context) if item.context else ""
        options = "\n".join(self.option_template.format(text=t) for t in item.choices)
        return self.template.format(context=context, question=item.question, options=options,
                                    subject=item.subject or "")


# HellaSwag-style items continue the context directly, with no "Question:/Answer:" frame.
PLAIN_CLOZE = ClozeFormat(template="{context}{question}")


def apply_chat_template(tokenizer, user_text: str, *, answer_prefix: str = "") -> str:
    """Wrap `user_text` as one user turn with the tokenizer's chat template, ready for the assistant's answer.

    `answer_prefix` (e.g. "Answer:") is appended after the generation prompt so the next token is the letter.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"Tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no chat template; "
            "use plain prompts (no chat template) or set `tokenizer.chat_template`."
        )
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                         add_generation_prompt=True)
    return text + answer_prefix
