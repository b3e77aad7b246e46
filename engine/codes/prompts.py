"""A generic prompt vocabulary for training the head without captions.

Distillation keeps image-to-prompt similarities faithful for these prompts, so they should span
what people search for: everyday objects, animals, scenes, clothing, colours and materials.
"""

from __future__ import annotations

TEMPLATES = ("a photo of {}", "{}")

SUBJECTS = """
person; man; woman; child; baby; crowd; face; hand; dog; cat; horse; cow; sheep; bird; chicken;
duck; fish; leopard; tiger; lion; elephant; giraffe; zebra; bear; monkey; rabbit; mouse; insect;
butterfly; snake; car; truck; bus; train; bicycle; motorcycle; airplane; boat; ship; road; street;
bridge; building; house; church; tower; city; skyline; village; farm; field; forest; tree; flower;
grass; garden; park; beach; sea; ocean; lake; river; waterfall; mountain; hill; desert; snow;
ice; sky; cloud; sunset; night; rain; fire; smoke; rock; sand; food; fruit; apple; banana; orange;
bread; cake; pizza; sandwich; vegetable; salad; meat; drink; coffee; wine; bottle; cup; glass;
plate; bowl; knife; fork; spoon; table; chair; sofa; bed; lamp; window; door; wall; floor; kitchen;
bathroom; bedroom; office; computer; laptop; phone; screen; keyboard; book; paper; pen; clock;
toy; ball; game; sport; football; tennis; swimming; running; dancing; music; guitar; piano; drum;
painting; drawing; sculpture; statue; poster; text; logo; sign; map; diagram; chart; pattern;
texture; shadow; light; reflection; portrait; landscape; close-up; aerial view; interior; exterior;
clothing; garment; fashion; outfit; shirt; t-shirt; top; blouse; sweater; pullover; jumper;
hoodie; cardigan; jacket; coat; parka; blazer; vest; dress; gown; skirt; trousers; pants; jeans;
shorts; leggings; suit; uniform; underwear; swimsuit; scarf; hat; cap; glove; sock; shoe; shoes;
footwear; sneaker; trainer; running shoe; boot; ankle boot; sandal; slipper; high heel; flip-flop;
loafer; bag; handbag; purse; backpack; suitcase; wallet; belt; jewellery; necklace; ring; watch;
sunglasses; umbrella; tool; hammer; machine; engine; wheel; box; basket; bucket; chair leg
""".replace("\n", " ")

ATTRIBUTES = """
red; blue; green; yellow; black; white; grey; brown; pink; purple; orange; striped; checked;
dotted; plain; bright; dark; colourful; black and white; old; new; small; large; long; short;
tall; round; square; soft; hard; leather; wooden; metal; plastic; glass; cotton; wool; knitted;
denim; warm; summer; winter; casual; formal; sporty; elegant; vintage; modern
""".replace("\n", " ")


def vocabulary() -> list[str]:
    """Subjects in each template, plus attribute-subject pairs for clothing-like subjects."""
    subjects = [s.strip() for s in SUBJECTS.split(";") if s.strip()]
    attributes = [a.strip() for a in ATTRIBUTES.split(";") if a.strip()]
    out = [t.format(s) for s in subjects for t in TEMPLATES]
    for i, s in enumerate(subjects):
        # a deterministic sprinkle of attributes keeps the list short but varied
        for k in range(3):
            out.append(f"a {attributes[(7 * i + 11 * k) % len(attributes)]} {s}")
    return list(dict.fromkeys(out))
