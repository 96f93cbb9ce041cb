"""Where does a Patch-IB checkpoint's retrieval signal live on phantoms? An oracle pooling probe.

    python train_patch_ib.py --probe RUN/best.pt [--probe-split test]

For the phantoms of the split that have finding boxes, the image embedding is rebuilt from the SAME patch
tokens and image_proj with three poolings: all patches (the model's own global embedding), only the patches
whose centre lies in a finding box, only the other patches; each is scored by text-to-image R@1 / R@5 among
the images with patch centres both inside and outside the boxes (duplicate rule of evals/patch_ib.py). If the box-only pooling retrieves no better than
the outside-only pooling, a mask that keeps the box patches gains nothing on the retrieval losses, and a
bottleneck trained by them has no reason to localize the findings.
Second table, knock-out through the encoder (the noise bottleneck's eval form, models/patch_ib.py): the patch
embeddings of the box patches are replaced by the mean patch embedding of the probe's images (before the
position embeddings and every block; eps = that mean), the tower re-runs and its pooled output is projected;
beside it the same number of patches drawn at random from outside the boxes of each image (mean over 5
draws, seeds 0-4), and no patch. Images: those with at least as many patch centres outside the boxes as
inside. If knocking out the box patches lowers t2i R@1 / R@5 more than knocking out as many other patches,
the findings carry more of
the retrieval signal per patch than the rest. Prints both tables; returns the dict.
Shape letters: N images with boxes, P patches, Dv tower width, E embed.
"""
import numpy as np
import torch
import torch.nn.functional as F

from evals.patch_ib import report_groups
from metrics.localization import box_masks
from metrics.retrieval import retrieval_metrics


@torch.no_grad()
def probe(model, dataset, name="checkpoint", split="test"):
    """model: a built Patch-IB in eval mode; dataset: the split's phantoms -> dict of the table's numbers."""
    samples = [dataset[i] for i in range(len(dataset))]
    samples = [s for s in samples if len(s["boxes"])]
    size = samples[0]["image"].shape[-1]
    centres = ((np.arange(model.grid) + 0.5) * size / model.grid).astype(int)
    tokens, texts, inside, patch_embeds = [], [], [], []
    for start in range(0, len(samples), 32):
        chunk = samples[start:start + 32]
        v, _ = model.image_tower(torch.stack([s["image"] for s in chunk]),
                                 bottleneck=lambda x: patch_embeds.append(x) or x)   # (n, P, Dv)
        ids, attention_mask, _ = model.tokenize([s["report"] for s in chunk])
        tokens.append(v)
        texts.append(model.encode_text(ids, attention_mask)[1])                        # (n, E)
        for s in chunk:
            pixels = box_masks([np.asarray(s["boxes"])], size, size)[0]
            inside.append(torch.from_numpy(pixels[np.ix_(centres, centres)].reshape(-1)))   # (P,)
    v, text, inside = torch.cat(tokens), torch.cat(texts), torch.stack(inside).float()     # (N, P, Dv), (N, E), (N, P)
    groups = report_groups([s["report"] for s in samples])
    results = {"images": float(len(samples)), "box_patch_share": float(inside.mean())}
    usable = (inside.sum(1) > 0) & (inside.sum(1) < inside.shape[1])                    # (N,) both kinds of patch
    for pooling, weights in (("all", torch.ones_like(inside)), ("inside_boxes", inside), ("outside_boxes", 1 - inside)):
        pooled = (weights.unsqueeze(-1) * v).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)   # (N, Dv)
        image = F.normalize(model.image_proj(pooled), dim=-1)                          # (N, E)
        similarity = (image @ text.T)[usable][:, usable]
        r = retrieval_metrics(similarity, groups[usable.numpy()], groups[usable.numpy()], ks=(1, 5))
        results.update({f"{pooling}/t2i/R@1": r["t2i/R@1"], f"{pooling}/t2i/R@5": r["t2i/R@5"],
                        f"{pooling}/images": float(usable.sum())})
    print(f"{name} ({split}: {int(usable.sum())} phantoms with patch centres both inside and outside "
          f"the finding boxes, of {len(samples)} with boxes; box patches {float(inside[usable].mean()):.3f} of the "
          f"grid; chance R@1 about {1 / int(usable.sum()):.4f})")
    print("| pooling | images | t2i R@1 | t2i R@5 |\n| --- | --- | --- | --- |")
    for pooling in ("all", "inside_boxes", "outside_boxes"):
        print(f"| {pooling} | {results[pooling + '/images']:.0f} | {results[pooling + '/t2i/R@1']:.3f} | "
              f"{results[pooling + '/t2i/R@5']:.3f} |")
    results.update(knock_out(model, samples, inside, text, groups, torch.cat(patch_embeds).mean((0, 1))))
    print("| knocked out (patch content -> mean patch embedding, tower re-run) | images | t2i R@1 | t2i R@5 |\n"
          "| --- | --- | --- | --- |")
    for knocked in ("none", "box_patches", "other_patches"):
        print(f"| {knocked} | {results['knockout/images']:.0f} | {results[f'knockout/{knocked}/t2i/R@1']:.3f} | "
              f"{results[f'knockout/{knocked}/t2i/R@5']:.3f} |")
    return results


@torch.no_grad()
def knock_out(model, samples, inside, text, groups, fill):
    """inside (N, P) box-patch indicator, text (N, E), fill (Dv,) -> t2i R@1/5 with no patch, the box patches,
    or as many random other patches replaced by fill before the encoder blocks (images with enough others)"""
    usable = (inside.sum(1) > 0) & ((1 - inside).sum(1) >= inside.sum(1))           # (N,)
    index = usable.nonzero()[:, 0].tolist()
    images = torch.stack([samples[i]["image"] for i in index])                       # (n, 3, H, W)

    def scores(dropped):
        keep = (1 - dropped[index]).unsqueeze(-1)                                    # (n, P, 1)
        pooled = torch.cat([model.image_tower(images[j:j + 32], bottleneck=lambda x, k=keep[j:j + 32]:
                                              k * x + (1 - k) * fill)[1] for j in range(0, len(index), 32)])
        image = F.normalize(model.image_proj(pooled), dim=-1)                        # (n, E)
        r = retrieval_metrics(image @ text[index].T, groups[index], groups[index], ks=(1, 5))
        return np.array([r["t2i/R@1"], r["t2i/R@5"]])

    draws = []
    for seed in range(5):                                                            # random others, 5 draws
        generator, others = torch.Generator().manual_seed(seed), torch.zeros_like(inside)
        for i in index:
            outside = (inside[i] == 0).nonzero()[:, 0]
            others[i, outside[torch.randperm(len(outside), generator=generator)[:int(inside[i].sum())]]] = 1
        draws.append(scores(others))
    results = {"knockout/images": float(len(index))}
    for knocked, (r1, r5) in (("none", scores(torch.zeros_like(inside))), ("box_patches", scores(inside)),
                              ("other_patches", np.mean(draws, axis=0))):
        results.update({f"knockout/{knocked}/t2i/R@1": float(r1), f"knockout/{knocked}/t2i/R@5": float(r5)})
    return results
