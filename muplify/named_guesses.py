"""Steps of the width solver (:data:`muplify.evidence.STEPS`) that *name* a guess without marking a dim: where one
width cannot tell whether a dim scales (K/V heads repeated to the query heads, a returned latent or a conditioning
embedding narrower than the width, an embedding concatenated into a scaling dim), the reading stays the graph's and
the plan names the guess on every parameter it touches, pointing to ``base=`` (two widths decide it exactly)."""
from __future__ import annotations

from .evidence_state import Evidence
from .rules import CONTRACTING_KINDS

__all__ = ["concatenated_embeddings", "kv_heads_repeated", "own_size_embeddings", "returned_latents"]


def concatenated_embeddings(ev: Evidence) -> None:
    """guess (named, no mark): an embedding's feature axis of a size the config states apart from the width,
    concatenated with other dims into a scaling one (MobileBERT's readout: [embedding (e) ; extra (w - e)]): if e
    is fixed the other part is w - e, which no proportional expression states, so the scaling reading is a guess."""
    g, S, flow, hints = ev.g, ev.S, ev.flow, ev.cap.hints
    wsize = g.size[ev.root]
    for kind, out, parts in g.relations:
        if kind != "sum" or g.find(out) in S.finite:
            continue
        for p in parts:
            r = g.find(p)
            prods = flow.producers.get(r, [])
            if r not in S.finite and g.size[r] != wsize and g.size[r] in hints.sizes and prods and \
                    all(not fin for _, fin, _dep in prods):
                attrs = ", ".join(hints.sizes[g.size[r]][:2])
                ev.guesses.setdefault(r, f"embedding dim of size {g.size[r]} (= {attrs}) is concatenated into a "
                                         f"scaling dim of size {g.size[g.find(out)]}: taken to scale; if it is "
                                         "fixed the other part is width minus it, not proportional: pass base=")


def kv_heads_repeated(ev: Evidence) -> None:
    """guess (named, no mark): K/V heads repeated to the query heads (GQA: ``repeat_interleave``, or expand +
    reshape) are read as a fixed fraction of the query heads, so they scale; a model family may instead keep its
    K/V head count at every width (Llama 3: 8), and one width cannot tell: a named guess on the K/V axis and the
    projection axes built from it."""
    g, S = ev.g, ev.S
    heads = {g.find(a.heads) for a in g.attention if a.heads is not None}
    kv: set[int] = set()  # K/V head roots
    for kind, out, parts in g.relations:
        ro = g.find(out)
        if ro not in heads or kind not in ("scale", "prod") or ro in S.finite:
            continue
        for p in parts:
            r = g.find(p)
            if r != ro and g.size[r] > 1 and r not in S.finite and g.size[r] < g.size[ro]:
                kv.add(r)
    # no sizes in the text: a plan reused at another width (muplify.reuse) keeps it
    why = ("K/V heads repeated to the query heads (GQA): taken to grow with width (a fixed group size); if the model "
           "keeps its K/V head count at every width (Llama 3 keeps 8), they are fixed and K/V are output-like. One "
           "width cannot tell: pass base=<the model at the base width> (tune and transfer read it from two widths)")
    for r in kv:
        ev.guesses.setdefault(r, why)
    for kind, out, parts in g.relations:
        if kv and kind == "prod" and g.find(out) not in S.finite and any(g.find(p) in kv for p in parts):
            ev.guesses.setdefault(g.find(out), why)


def returned_latents(ev: Evidence) -> None:
    """guess (named, no mark): a scaling dim smaller than the width that a layer writes, a layer reads and the
    model returns (a VAE's latent mu / logvar, an autoencoder's code) is read as a fraction of the width; a latent
    size is often fixed as the model widens, and one width cannot tell: named on it and on the dims it is split
    from or joined into."""
    g, S, flow = ev.g, ev.S, ev.flow
    wsize = g.size[ev.root]
    written = set(flow.produced)  # by a layer, or split from / joined into what a layer writes (mu, logvar = chunk)
    for group in _relation_groups(ev):
        if group & flow.produced:
            written |= group
    found: dict[int, str] = {}
    for r, names in ev.out_roots.items():
        if r in S.finite or r in S.forced or g.size[r] >= wsize or r not in written or r not in flow.consumed:
            continue
        shown = ", ".join(f"'{n}'" for n in names[:2])
        # no sizes in the text: a plan reused at another width (muplify.reuse) keeps it
        found[r] = (f"a dim narrower than the width reaches model output {shown} and a layer reads it (a latent, a "
                    "code): taken to scale with the width; if its size is fixed as the model widens, pass base=<the "
                    "model at the base width>")
    for r, why in found.items():
        _name_with_relatives(ev, r, why)


def _relation_groups(ev: Evidence) -> list[set[int]]:
    """The roots each product/sum/multiple relation ties together, computed once per solve (the relations and the
    union-find are final by the time the named guesses run)."""
    if ev.relation_groups is None:
        g = ev.g
        ev.relation_groups = [{g.find(out), *(g.find(p) for p in parts)} for _kind, out, parts in g.relations]
    return ev.relation_groups


def _name_with_relatives(ev: Evidence, r: int, why: str) -> None:
    """Name guess ``why`` on dim ``r`` and on the scaling dims it is split from, joined into or multiplied with (one
    relation): their reading rests on the same ambiguity (the input of the layer that reads a concatenation)."""
    g, S = ev.g, ev.S
    ev.guesses.setdefault(r, why)
    for group in _relation_groups(ev):
        if r in group:
            for x in group:
                if x not in S.finite and x not in S.forced and g.size[x] > 1:
                    ev.guesses.setdefault(x, why)


def own_size_embeddings(ev: Evidence) -> None:
    """guess (named, no mark): an embedding whose feature dim is not the width's size and that a layer reads (a
    class or task embedding conditioning the model through a projection, a factorized embedding) is read as a
    fraction or multiple of the width; such a size is often fixed as the model widens (ALBERT keeps 128), and one
    width cannot tell (a config that states the size decides it: the input-side guess above)."""
    g, S, flow = ev.g, ev.S, ev.flow
    wsize = g.size[ev.root]
    # no sizes in the text: a plan reused at another width (muplify.reuse) keeps it
    why = ("an embedding whose size is not the width's feeds a layer (a conditioning or factorized embedding): taken "
           "to scale with the width; if its size is fixed as the model widens, pass base=<the model at the base width>")
    heads = {g.find(a.heads) for a in g.attention if a.heads is not None}
    for r, prods in flow.producers.items():
        r = g.find(r)
        if r in S.finite or r in S.forced or g.size[r] == wsize or r not in flow.consumed or r in heads or \
                not prods or any(fin for _, fin, _dep in prods):
            continue  # heads: a relative-position bias per head (T5, Swin) scales with the heads
        if all(u.kind == "embedding" for ph, *_ in prods for u in g.uses.get(ph, []) if u.kind in CONTRACTING_KINDS):
            _name_with_relatives(ev, r, why)  # DLRM: [bottom MLP ; embeddings] into the top MLP
