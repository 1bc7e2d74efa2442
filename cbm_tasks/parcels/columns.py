"""Which columns of a parcel register hold the parcel id, crop code and crop name.

Auto-detection walks tiers of candidate names (compared case-insensitively): generic names
first, then the national schemes, then the bare ``id``. The first tier with a match wins;
two matches in the same tier are ambiguous and the user must choose. An explicit column
name is matched exactly, else case-insensitively. ``"-"`` declares that the file has no such
column (crop code and crop name only; a parcel id is always needed). A crop code or name column
that is not found is a warning, and the parcels are imported without (a register of field blocks
has no crops; no scheme rule applies to a parcel without a crop code); a column named but absent,
or two that qualify, are errors.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cbm_tasks.errors import ParcelImportError

__all__ = [
    "CROP_CODE_CANDIDATES",
    "CROP_NAME_CANDIDATES",
    "ID_CANDIDATES",
    "NO_COLUMN",
    "ParcelColumns",
    "choose_columns",
    "id_values",
    "text_values",
]

log = logging.getLogger(__name__)

NO_COLUMN = "-"
ID_SEPARATOR = "/"

# Each tier is a tuple of candidates; a candidate is one column or a combination of columns. The
# national names are the columns the registers publish their parcel (or claimed crop area) id and
# declared crop in, as the fiboa converters read them; shapefiles cut names to 10 characters, so
# both spellings are listed where they differ. Names that other registers use for something else
# (a field block, a row number) stay in a later tier than the registers' own.
ID_CANDIDATES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("parcel_id",), ("parcelid",), ("id_parcel",), ("field_id",)),
    (
        ("ref_id",),  # Flanders, Landbouwgebruikspercelen
        ("geo_id",),  # Austria, INSPIRE Schlaege
        ("rfl_id",),  # Austria, INSPIRE Referenzen (reference parcels)
        ("journalnr", "marknr"),  # Denmark, Marker: Marknr counts fields within one application
        ("peruslohkotunnus", "lohkonumero"),  # Finland, base parcel + plant parcel number
        ("blockid", "skiftesbet"),  # Sweden: field (skifte) designation within its block
        ("t_id",),  # Switzerland, the INTERLIS object id of a land use area
        ("zakres_id",),  # Czechia, LPIS claimed areas (ZAKRES)
        ("kodkd",),  # Slovakia, LPIS land part code
        ("phbident",),  # Bulgaria, physical block
        ("dn_oid",),  # Spain, SIGPAC recinto (every region's export)
        ("id_recinto",),  # Spain, Andalusia
        ("pollu_id",),  # Estonia
        ("nma_id",),  # Lithuania
        ("osa_id",),  # Portugal
        ("fbi_kurz",),  # Germany, Thuringia
        ("csbid",),  # USA, USDA crop sequence boundaries
        ("uniqueid",),  # USA, California statewide crop mapping
        ("polygon_uuid",),  # Japan, field polygons
        ("cropfield",),  # Italy
    ),
    (("flik",), ("localid",)),  # field blocks (Schleswig-Holstein, Luxembourg); INSPIRE's local id (Ireland, Wallonia)
    (("identifier",),),  # Germany, Saarland
    (("id",),),  # fiboa; NL BRP (the GeoPackage key); Slovenia, Croatia
    (("objectid",),),  # an ESRI row number: the id of last resort (Belgium, Wallonia)
    (("fid",),),  # a GeoPackage's own key, or a feature number property (Catalonia, NL reference parcels)
)
CROP_CODE_CANDIDATES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("crop_code",), ("cropcode",), ("crop:code",)),
    (
        ("gewascode",),  # NL BRP
        ("gwscod_h",),  # Flanders, main crop (hoofdteelt)
        ("snar_code",),  # Austria
        ("afgkode",),  # Denmark
        ("kasvikoodi",),  # Finland
        ("code_cultu",),  # France RPG
        ("plodina_id",),  # Czechia
        ("cult_cod",),  # Belgium, Wallonia (SIGEC)
        ("sifra_kmrs",),  # Slovenia
        ("product_code",), ("product_co",),  # Latvia
        ("taotletud_kultuur",), ("taotletud_",),  # Estonia (requested crop)
        ("lc_mapcode",),  # Romania
        ("uso_sigpac",), ("cd_uso",), ("cultivo_co",),  # Spain: SIGPAC use; Andalusia; Canary Islands
        ("cul_codigo",),  # Portugal
        ("grdkod_mar",),  # Sweden
        ("land_use_id",),  # Croatia
        ("lnf_code",),  # Switzerland
        ("nc_festg",),  # Germany, Lower Saxony
        ("bodennutzu",),  # Germany, Mecklenburg-Western Pomerania
        ("original_code",),  # Italy
        ("main_crop",),  # USA, California
    ),
    (("ec_hcat_c",), ("crop_id",)),  # EuroCrops' harmonised code (beside a national one, that one wins)
    (("code",),),  # Germany, Brandenburg and North Rhine-Westphalia (a bare "code": last)
)
CROP_NAME_CANDIDATES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("crop_name",), ("cropname",), ("crop:name",)),
    (
        ("gewas",),
        ("gwsnam_h",),
        ("snar_bezeichnung",),
        ("afgroede",),
        ("kasvikoodi_selite_fi",),
        ("plod_naze",),  # Czechia
        ("plodina",),  # Slovakia
        ("cult_nom",),  # Belgium, Wallonia
        ("rastlina",),  # Slovenia
        ("product_description",), ("product_de",),  # Latvia
        ("lc_class_n",),  # Romania
        ("usageeng",),  # Bulgaria (English)
        ("cultiu",),  # Spain, Catalonia
        ("cultivo_na",),  # Spain, Canary Islands
        ("nutzung",),  # Switzerland
        ("code_txt",), ("code_bez",),  # Germany, North Rhine-Westphalia; Brandenburg
        ("grupe",),  # Lithuania
    ),
    (("ec_hcat_n",),),  # EuroCrops' harmonised name
)


@dataclass(frozen=True, slots=True)
class ParcelColumns:
    """The source columns used for one import."""

    id: tuple[str, ...]  # one column, or several whose values are joined with "/"
    crop_code: str | None
    crop_name: str | None

    def all(self) -> tuple[str, ...]:
        """Return every column to read, without repetitions."""
        names = [*self.id, self.crop_code, self.crop_name]
        return tuple(dict.fromkeys(n for n in names if n is not None))


def choose_columns(
    fields: Sequence[str],
    *,
    id_column: str | None,
    crop_code_column: str | None,
    crop_name_column: str | None,
    source: str,
) -> ParcelColumns:
    """Resolve the user's column options against the layer's fields, detecting the rest.

    Args:
        fields: the layer's column names.
        id_column: None to detect, else a column or comma-separated columns.
        crop_code_column: None to detect, "-" for none, else a column.
        crop_name_column: as crop_code_column.
        source: file name for messages.

    Raises:
        ParcelImportError: a given column does not exist, detection finds several, or no parcel id.
    """
    if id_column is not None:
        ids = tuple(_resolve(fields, part.strip(), "--id-column", source) for part in id_column.split(","))
    elif (detected := _detect(fields, ID_CANDIDATES, "parcel id", "--id-column", source)) is not None:
        ids = detected
    else:
        raise ParcelImportError(f"{source}: no parcel id column found among: {', '.join(fields)}; "
                                "name it with --id-column")
    return ParcelColumns(
        id=ids,
        crop_code=_optional(fields, crop_code_column, CROP_CODE_CANDIDATES, "crop code", "--crop-code-column", source),
        crop_name=_optional(fields, crop_name_column, CROP_NAME_CANDIDATES, "crop name", "--crop-name-column", source),
    )


def _optional(
    fields: Sequence[str],
    given: str | None,
    tiers: tuple[tuple[tuple[str, ...], ...], ...],
    what: str,
    option: str,
    source: str,
) -> str | None:
    if given == NO_COLUMN:
        return None
    if given is not None:
        return _resolve(fields, given, option, source)
    found = _detect(fields, tiers, what, option, source)
    if found is None:
        # a register without crops (field blocks, reference parcels) is a parcel set still: its parcels
        # are extracted, only no scheme rule applies to a parcel without a crop code (the import says so)
        log.warning("%s: no %s column found among %s; imported without (%s names one)", source, what,
                    ", ".join(fields), option)
        return None
    return found[0]


def _resolve(fields: Sequence[str], given: str, option: str, source: str) -> str:
    if given in fields:
        return given
    folded = [f for f in fields if f.casefold() == given.casefold()]
    if len(folded) == 1:
        return folded[0]
    raise ParcelImportError(
        f"{source}: column {given!r} given as {option} does not exist; columns are: {', '.join(fields)}"
    )


def _detect(
    fields: Sequence[str],
    tiers: tuple[tuple[tuple[str, ...], ...], ...],
    what: str,
    option: str,
    source: str,
) -> tuple[str, ...] | None:
    """The columns of the first tier with a match (None: no tier matches); two in a tier are an error."""
    by_name: dict[str, list[str]] = {}
    for field in fields:
        by_name.setdefault(field.casefold(), []).append(field)
    for tier in tiers:
        found = [cand for cand in tier if all(part in by_name for part in cand)]
        if not found:
            continue
        spelled = [tuple(name for part in cand for name in by_name[part]) for cand in found]
        if len(found) > 1 or len(spelled[0]) != len(found[0]):
            choices = " or ".join(",".join(names) for names in spelled)
            raise ParcelImportError(f"{source}: ambiguous {what} column: {choices} all qualify; choose with {option}")
        return spelled[0]
    return None


def _text(value: Any) -> str | None:
    """Return a cell as text: integral floats lose their '.0' (593.0 -> '593'), blanks become None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def text_values(values: Sequence[Any]) -> list[str | None]:
    """Return the cells of one column as text (see :func:`_text`)."""
    return [_text(v) for v in values]


def id_values(columns: Sequence[Sequence[Any]]) -> list[str | None]:
    """Return the parcel ids made from one or more columns; None where any part is blank."""
    parts = [text_values(column) for column in columns]
    out: list[str | None] = []
    for row in zip(*parts, strict=True):
        out.append(None if any(p is None for p in row) else ID_SEPARATOR.join(p for p in row if p is not None))
    return out
