"""Chat: ``templates`` (a conversation → the exact prompt a chat model was trained on → token ids, and the stop
strings that end its reply) and ``cli`` (``armm chat``: a conversation in the terminal).

The template API is re-exported here: ``from armm.chat import get_template, render``."""

from armm.chat.templates import BUILT_IN, ChatTemplate, Rendered, get_template, render, template_for_model

__all__ = ["BUILT_IN", "ChatTemplate", "Rendered", "get_template", "render", "template_for_model"]
