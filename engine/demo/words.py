"""Word lists for the synthetic tasks (keys of the multi-key needle task, filler sentences, word lists)."""

ADJECTIVES = """able acid angry aware bad bent best big bitter black blue bold brave brief bright broad broken brown
busy calm cheap chief clean clear close cold cool crazy cruel curly cute damp dark dead deep dense dirty dry dull
eager early easy empty equal even exact faint fair false fancy fast fat fierce final fine firm flat fond free fresh
full funny gentle giant glad gold good grand great green grey happy hard harsh heavy high hollow holy honest hot huge
humble hungry icy idle ill jolly juicy keen kind large last late lazy lean left light little live lone long loose
loud low loyal lucky mad main major mild minor modern moist narrow near neat new nice noble noisy odd old open pale
plain polite poor proud pure quick quiet rapid rare raw real red rich right rigid ripe rough round royal rude rural
sad safe salty sharp shiny short shy sick silent silly slim slow small smart smooth soft solid sour spare spicy
steep stiff still strange strict strong sunny super sweet swift tall tame tender thick thin tidy tight tiny tough
true ugly upper urban usual vague vast vivid warm weak wet white whole wide wild wise witty young""".split()

NOUNS = """actor airport album angle animal answer apple army arrow artist autumn baby badge bag ball band bank base
basket bath beach bean bear bed bell belt bench bird blade blanket boat body bone book boot bottle box brain branch
bread brick bridge brush bucket cabin cable cake camera camp candle canvas car card carpet castle cat cave chain
chair chalk cheese chest child circle city clock cloud coast coat coffee coin comet cook corner cotton county cow
crown cup curtain dance desert desk diamond dinner dish doctor dog door dragon dream dress drum eagle earth egg
engine eye face farm feather fence field finger fire fish flag flame floor flower forest fork fox frog fruit garden
gate ghost gift glass glove goat grape grass guitar hammer hand harbor hat heart hill horse house ice island jacket
jar jewel key king kite knife ladder lake lamp leaf lemon letter lion lock map market mask meadow metal mirror
monkey moon mountain mouse nest net ocean office onion orange owl paint palace paper parrot pen pencil piano
pillow pipe planet plate pocket pond potato queen rabbit radio rain ring river road robot rock roof rope rose sail
salt sand school sea seed shadow sheep shell ship shirt shoe silver sky snake snow sock soup spoon star stone storm
street sugar sun table tiger tower town train tree truck tunnel turtle valley village violin wagon wall watch water
whale wheel window wing winter wolf wood yard""".split()

VERBS = """admires answers bakes builds buys carries catches cleans climbs collects cooks copies covers crosses
draws drives eats fills finds fixes follows gathers grows guards hides holds hunts joins keeps kicks knows leads
lifts likes loves moves opens paints passes picks plants pulls pushes reads repairs rides sells sends shares shows
sings sorts studies teaches throws touches trades visits washes watches wraps writes""".split()
