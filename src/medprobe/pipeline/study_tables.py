"""The study's tables (arXiv 2509.06467 v3, Tables 2-16 and the BCNB radar chart), row by row, as medprobe sees them.

Each :class:`StudyTable` names the sweep tasks it is made of (by their study keys: the reference keys of
:func:`medprobe.report.reference.match_task`), the heads that implement the study's protocol for it, and every
row the paper prints (a :class:`StudyRow`): the encoder of the study grid that produces it (and, for the PET/CT
table, the input it ran on), or the reason medprobe cannot produce it (a supervised network trained end to end,
a prompted model, a dataset the paper never describes ...). ``medprobe study`` prints its coverage table by table
from this. Torch-free data.
"""

from __future__ import annotations

from dataclasses import dataclass

S, B, L = "dinov3-vits16", "dinov3-vitb16", "dinov3-vitl16"

SUPERVISED = ("a fully supervised network trained end to end on the task (the study quotes its number from the "
              "literature); medprobe trains light heads on frozen encoders")
SUPERVISED_SEG = ("a supervised segmentation network trained end to end (quoted by the study); medprobe trains "
                  "decoders on frozen encoders only")
PROMPTED = ("promptable segmentation from ground-truth points / boxes; medprobe has no prompted mask decoder")
SSL_LINEAR = ("a self-supervised encoder under 'linear fine-tuning': the study names neither its checkpoint "
              "(pre-training data) nor its recipe, nor whether it re-ran it; not in the study grid (a checkpoint "
              "can be added as an encoder, e.g. timm:...)")
LEARNED_REG = "a learned registration network trained on the training pairs, not a zero-shot frozen-feature method"
MIND_CONVEXADAM = ("not a cell of the study grid; medprobe runs it: head convexadam with "
                   "head_params.convexadam.features: mind (no encoder)")
ANATOMIX = "Anatomix (a pretrained 3D feature network) is not an encoder medprobe has"


@dataclass(frozen=True)
class StudyRow:
    """One printed row: ``encoder`` (a grid encoder) produces it, or ``reason`` says why medprobe does not.

    ``heads`` narrows the table's protocol heads for this row (e.g. ``identity`` = "Unregistered"); ``inputs``
    the input ablation value (PET/CT); ``needs_weights`` False for encoder-free rows; ``note``: a caveat on a
    row medprobe produces (e.g. a different protocol than the number the study quotes)."""

    method: str
    encoder: str | None = None
    reason: str = ""
    heads: tuple[str, ...] = ()
    inputs: str | None = None
    needs_weights: bool = True
    note: str = ""

    @property
    def supported(self) -> bool:
        return not self.reason


@dataclass(frozen=True)
class StudyTable:
    """One table of the study: its tasks (study keys), the heads of its protocol, its printed rows."""

    key: str
    title: str
    tasks: tuple[str, ...]
    heads: tuple[str, ...]
    rows: tuple[StudyRow, ...]
    encoder_free_heads: tuple[str, ...] = ()  # heads of these tasks that never run the encoder (weights unused)
    not_supported: tuple[str, ...] = ()  # parts of the table medprobe cannot produce, each with its reason
    note: str = ""


def _dino(*sizes: str, prefix: str = "DINOv3-", suffix: str = "", **kw: object) -> tuple[StudyRow, ...]:
    enc = {"S": S, "B": B, "L": L}
    return tuple(StudyRow(f"{prefix}{s}{suffix}", enc[s], **kw) for s in sizes)  # type: ignore[arg-type]


def _unsupported(reason: str, *methods: str) -> tuple[StudyRow, ...]:
    return tuple(StudyRow(m, reason=reason) for m in methods)


_WSI_ROWS = (StudyRow("ResNet50 (ImageNet)", "resnet50"), StudyRow("UNI", "uni"), StudyRow("CONCH", "conch"),
             *_dino("S", "B"))
_EM_ROWS = (*_unsupported(SUPERVISED_SEG.replace("segmentation", "EM instance"), "Superhuman", "MALA", "PEA",
                          "APViT", "LSD", "CAD"), *_dino("S", "B", "L"))
_PET_ROWS = (*_unsupported(SUPERVISED_SEG, "UNet", "VNet", "UNETR", "Swin UNETR", "VSmTrans", "UNETR++", "U-KAN",
                           "Nestedformer", "A2FSeg", "H-DenseFormer"),
             *(r for inp in ("CT", "PET", "CT+PET") for r in _dino("S", "B", "L", suffix=f"/16 {inp}", inputs=inp)))

STUDY_TABLES: tuple[StudyTable, ...] = (
    StudyTable("2", "Table 2. Chest X-ray, linear probe at 256 px (NIH-14, RSNA)", ("nih14", "rsna-pneumonia"),
               ("linear",), (StudyRow("BiomedCLIP", "biomedclip"), *_dino("S", "B", "L"))),
    StudyTable("3", "Table 3. CAMELYON16 -> CAMELYON16, ABMIL", ("camelyon16",), ("abmil",), _WSI_ROWS,
               note="no DINOv3-L row is printed"),
    StudyTable("4", "Table 4. CAMELYON16 -> CAMELYON17 (unseen centres), ABMIL", ("camelyon16-to-17",), ("abmil",),
               _WSI_ROWS, note="no DINOv3-L row is printed"),
    StudyTable("fig3", "Fig. 3. BCNB, 5 biomarkers, 5-fold CV, ABMIL (radar chart only)",
               ("bcnb-aln", "bcnb-er", "bcnb-pr", "bcnb-her2", "bcnb-ki67"), ("abmil",), _WSI_ROWS,
               note="the study prints no BCNB number: rows run, nothing to compare them with"),
    StudyTable("5", "Table 5. Kvasir-Capsule, 11 classes, linear probe", ("kvasir-capsule",), ("linear",),
               (*_unsupported(SUPERVISED, "GMSRF net", "ConvMix-1536/20", "ConViT-S", "Swin-S", "FocalConv net",
                              "Vats et al.", "API net", "VAPCaps"), *_dino("S", "B", "L"))),
    StudyTable("6", "Table 6. AutoLaparo phase recognition, frame-wise linear probe", ("autolaparo",), ("linear",),
               (*_unsupported(SUPERVISED.replace("network", "video network with temporal modelling"), "SV-RCNet",
                              "TMRNet", "Trans-SVNet", "LoViT", "STSANet"), *_dino("S", "B", "L"))),
    StudyTable("7", "Table 7. EndoVis 2018 instrument segmentation, 2D decoder", ("endovis2018",), ("decoder2d",),
               (*_unsupported(SUPERVISED_SEG, "Vanilla UNet", "TernausNet", "MF-TAPNet", "Wang et al.", "ISINet",
                              "ST-MTL", "AP-MTL", "S-MTL", "TraSeTR", "S3Net"),
                *_unsupported(PROMPTED, "SAM (1 point)", "SAM (box)", "SAM 2-Image (1 point)", "SAM 2-Image (box)",
                              "SAM 2-Video (1 point)"), *_dino("S", "B", "L"))),
    StudyTable("8", "Table 8. EDD2020 segmentation, 2D decoder", ("edd2020",), ("decoder2d",),
               (*_unsupported(SUPERVISED_SEG, "TransUnet", "Unet", "HarDNet", "Swin UNETR", "ESFPNet", "DUAT",
                              "FCBFormer", "MSRF-Net", "GMSRF-Net", "Polyp-PVT", "PNS+", "EAT"),
                *_dino("S", "B", "L"))),
    StudyTable("9", "Table 9. CT-RATE, slice embeddings mean-pooled, linear probe and k-NN", ("ct-rate",),
               ("linear", "knn"),
               (StudyRow("CT-Net", reason="a supervised 3D CNN trained end to end (quoted from the CT-CLIP paper)"),
                StudyRow("CT-CLIP", "ct-clip", note="medprobe probes CT-CLIP's frozen image encoder (linear / k-NN); "
                         "the printed 0.731 is quoted from the CT-CLIP paper, not this protocol"),
                *_dino("S", "B", "L"))),
    StudyTable("10-11", "Tables 10-11. MSD, 10 tasks, 5-fold CV, pseudo-3D decoder",
               ("msd-braintumour", "msd-heart", "msd-liver", "msd-hippocampus", "msd-prostate", "msd-lung",
                "msd-pancreas", "msd-hepaticvessel", "msd-spleen", "msd-colon"), ("decoder3d",),
               (*_unsupported(SUPERVISED_SEG, "3D U-Net", "V-Net", "nnU-Net", "TransUNet", "SwinUNETR", "UNETR"),
                *_unsupported(SSL_LINEAR, "MAE-ViT-B/16", "MAE-ViT-L/16", "SimCLR", "MoCo-v3", "SwAV", "BYOL"),
                *_dino("S", "B", "L")),
               note="the printed B / L averages do not match their own per-task values"),
    StudyTable("12", "Table 12. CREMI A / B / C, affinities + agglomeration", ("cremi-a", "cremi-b", "cremi-c"),
               ("affinity",), _EM_ROWS),
    StudyTable("13", "Table 13. AC3/AC4 and Wafer4, affinities + agglomeration", ("ac3-ac4",), ("affinity",), _EM_ROWS,
               not_supported=("Wafer4 columns: the study describes no Wafer4 dataset (source, sections, split), so "
                              "no task can be written for it",)),
    StudyTable("14", "Table 14. AutoPET-II and HECKTOR 2022, pseudo-3D decoder on CT, PET, CT+PET",
               ("autopet-ii", "hecktor2022"), ("decoder3d",), _PET_ROWS,
               note="the study does not say how CT and PET were fused (medprobe: features of each, concatenated)"),
    StudyTable("15", "Table 15. CAMUS 2D registration, zero-shot features + ConvexAdam", ("camus",), ("convexadam",),
               (StudyRow("Unregistered", heads=("identity",), needs_weights=False),
                StudyRow("VoxelMorph", reason=LEARNED_REG), StudyRow("MIND + ConvexAdam", reason=MIND_CONVEXADAM),
                StudyRow("Anatomix + ConvexAdam", reason=ANATOMIX),
                *_dino("S", "B", "L", prefix="DINO-", suffix=" + ConvexAdam")),
               encoder_free_heads=("identity", "affine")),
    StudyTable("16", "Table 16. ACDC 3D registration, zero-shot features + MIND + ConvexAdam", ("acdc",),
               ("convexadam",),
               (StudyRow("Unregistered", heads=("identity",), needs_weights=False),
                StudyRow("VoxelMorph", reason=LEARNED_REG), StudyRow("MIND + ConvexAdam", reason=MIND_CONVEXADAM),
                StudyRow("Anatomix + ConvexAdam", reason=ANATOMIX),
                *_dino("S", "B", "L", prefix="DINO-", suffix=" + MIND + ConvexAdam")),
               encoder_free_heads=("identity", "affine")),
)


def table_of(study_key: str | None) -> StudyTable | None:
    """The study table a sweep task (by its study key) belongs to, or None."""
    return next((t for t in STUDY_TABLES if study_key in t.tasks), None)


__all__ = ["STUDY_TABLES", "StudyRow", "StudyTable", "table_of"]
