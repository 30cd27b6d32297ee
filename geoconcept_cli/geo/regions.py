"""Continents, ISO 3166-1 country codes and the continent of each country: the region keys
that the concept set, the gazetteer and the metrics share."""

from __future__ import annotations

CONTINENTS: tuple[str, ...] = (
    "Africa",
    "Asia",
    "Europe",
    "North America",
    "South America",
    "Oceania",
    "Antarctica",
)


# ISO 3166-1 alpha-2, the 249 officially assigned codes, plus XK (Kosovo, user-assigned but
# used by OSM, the EU and most geodata).
ISO_ALPHA2: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW XK
    """.split()
)


# Continent of each country (GeoNames countryInfo, CC BY 4.0), as GeoNames codes.
_CONTINENT_CODES = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
                    "SA": "South America", "OC": "Oceania", "AN": "Antarctica"}  # fmt: skip


CONTINENT_OF: dict[str, str] = {
    cc: _CONTINENT_CODES[code]
    for cc, code in (
        pair.split(":")
        for pair in """
    AD:EU AE:AS AF:AS AG:NA AI:NA AL:EU AM:AS AN:NA AO:AF AQ:AN AR:SA AS:OC AT:EU AU:OC
    AW:NA AX:EU AZ:AS BA:EU BB:NA BD:AS BE:EU BF:AF BG:EU BH:AS BI:AF BJ:AF BL:NA BM:NA
    BN:AS BO:SA BQ:NA BR:SA BS:NA BT:AS BV:AN BW:AF BY:EU BZ:NA CA:NA CC:AS CD:AF CF:AF
    CG:AF CH:EU CI:AF CK:OC CL:SA CM:AF CN:AS CO:SA CR:NA CS:EU CU:NA CV:AF CW:NA CX:OC
    CY:EU CZ:EU DE:EU DJ:AF DK:EU DM:NA DO:NA DZ:AF EC:SA EE:EU EG:AF EH:AF ER:AF ES:EU
    ET:AF FI:EU FJ:OC FK:SA FM:OC FO:EU FR:EU GA:AF GB:EU GD:NA GE:AS GF:SA GG:EU GH:AF
    GI:EU GL:NA GM:AF GN:AF GP:NA GQ:AF GR:EU GS:AN GT:NA GU:OC GW:AF GY:SA HK:AS HM:AN
    HN:NA HR:EU HT:NA HU:EU ID:AS IE:EU IL:AS IM:EU IN:AS IO:AS IQ:AS IR:AS IS:EU IT:EU
    JE:EU JM:NA JO:AS JP:AS KE:AF KG:AS KH:AS KI:OC KM:AF KN:NA KP:AS KR:AS KW:AS KY:NA
    KZ:AS LA:AS LB:AS LC:NA LI:EU LK:AS LR:AF LS:AF LT:EU LU:EU LV:EU LY:AF MA:AF MC:EU
    MD:EU ME:EU MF:NA MG:AF MH:OC MK:EU ML:AF MM:AS MN:AS MO:AS MP:OC MQ:NA MR:AF MS:NA
    MT:EU MU:AF MV:AS MW:AF MX:NA MY:AS MZ:AF NA:AF NC:OC NE:AF NF:OC NG:AF NI:NA NL:EU
    NO:EU NP:AS NR:OC NU:OC NZ:OC OM:AS PA:NA PE:SA PF:OC PG:OC PH:AS PK:AS PL:EU PM:NA
    PN:OC PR:NA PS:AS PT:EU PW:OC PY:SA QA:AS RE:AF RO:EU RS:EU RU:EU RW:AF SA:AS SB:OC
    SC:AF SD:AF SE:EU SG:AS SH:AF SI:EU SJ:EU SK:EU SL:AF SM:EU SN:AF SO:AF SR:SA SS:AF
    ST:AF SV:NA SX:NA SY:AS SZ:AF TC:NA TD:AF TF:AN TG:AF TH:AS TJ:AS TK:OC TL:OC TM:AS
    TN:AF TO:OC TR:AS TT:NA TV:OC TW:AS TZ:AF UA:EU UG:AF UM:OC US:NA UY:SA UZ:AS VA:EU
    VC:NA VE:SA VG:NA VI:NA VN:AS VU:OC WF:OC WS:OC XK:EU YE:AS YT:AF ZA:AF ZM:AF ZW:AF
    """.split()
    )
}
