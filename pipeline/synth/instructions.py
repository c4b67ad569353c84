"""Instruction templates: direct ("Where do I grasp this mug?") and indirect ("Where should I hold this to pour
tea?"); the action is always recoverable from the text, the object not always named."""

from __future__ import annotations

import numpy as np

DIRECT = (
    "Where should I {verb} this {obj}?",
    "Show me the part of the {obj} I would {verb}.",
    "Point to where you {verb} the {obj}.",
    "Which region of this {obj} is used to {verb} it?",
    "I want to {verb} it. Where?",
)
VERBS = {
    "grasp": "grasp", "contain": "put things into", "lift": "lift", "open": "open", "lay": "lie on",
    "sit": "sit on", "support": "lean against", "wrapgrasp": "wrap my hand around", "pour": "pour from",
    "move": "push to move", "display": "look at", "push": "push", "listen": "listen with", "wear": "wear",
    "press": "press", "cut": "cut with", "stab": "stab with",
}  # fmt: skip
INDIRECT = {
    "grasp": ("Where do I hold it so it does not slip?", "Which bit do my fingers close on to pick it up?"),
    "contain": ("Where would the water stay if I filled it?", "Where do I store my things in this?"),
    "lift": ("Where do I take it to carry it up?", "Which straps bear the weight when I raise it?"),
    "open": ("How do I get inside it?", "What do I pull or turn to get it open?"),
    "lay": ("Where do I stretch out to sleep?", "Where does my back rest when I go to bed?"),
    "sit": ("Where do I take a seat?", "Where do I perch for a moment?"),
    "support": ("What keeps my back upright?", "Which surface holds things up?"),
    "wrapgrasp": ("Where do my palms go around it?", "Where do I hug it with my whole hand?"),
    "pour": ("Where should I hold this to pour tea?", "Where does the liquid come out when I tip it?"),
    "move": ("What should I push to slide it across the room?", "Where do I drag it to relocate it?"),
    "display": ("Where do I read what it shows?", "Where does the picture appear?"),
    "push": ("Where do I shove it to swing it?", "Which flat side do I press my hand on to pass?"),
    "listen": ("What goes against my ears for music?", "Where does the sound come from?"),
    "wear": ("Which part goes on my head?", "Where does my head fit in?"),
    "press": ("Where do my fingers tap to type?", "Which bit do I push down?"),
    "cut": ("Which edge slices the paper?", "Where does it do the slicing?"),
    "stab": ("Which end pierces things?", "What is the sharp point for poking?"),
}
NAMES = {"StorageFurniture": "cabinet", "TrashCan": "trash can", "Earphone": "headphones"}


def instruction(obj: str, affordance: str, rng: np.random.Generator) -> str:
    if rng.random() < 0.35:
        options = INDIRECT[affordance]
        return options[rng.integers(len(options))]
    template = DIRECT[rng.integers(len(DIRECT))]
    return template.format(verb=VERBS[affordance], obj=NAMES.get(obj, obj.lower()))
