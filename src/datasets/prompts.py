"""Class names and zero-shot prompt templates of the 20 tasks (docs/data.md, "Class names and templates").

Templates are `str.format` patterns with one `{}` for the class name. For the eight TA8 tasks they are those of
task_vectors' `src/datasets/templates.py` (also used by AdaMerging, EMR-Merging and FusionBench); for the twelve
TALL tasks they are FusionBench's `fusion_bench/tasks/clip_classification/<task>.py`, which OPCM's numbers come from.

Class names listed here are the ones the reference code hard-codes. DTD, SUN397, EuroSAT and Cars take theirs from
the data (folder names, `cars_meta.mat`), as task_vectors does; see `src.datasets.tasks`.

FusionBench quirks kept on purpose, because its published TALL14/TALL20 numbers were made with them: CIFAR-100's
class 26 is spelled "cra" (not "crab"), and CIFAR-100 and Oxford-IIIT Pet names keep their underscores.
"""
from __future__ import annotations

import re

_PHOTO_OF_A_THE = ["a photo of a {}.", "a photo of the {}."]
_CIFAR = ["a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
          "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
          "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
          "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
          "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
          "a photo of the small {}.", "a photo of the big {}."]
_NUMBER = ['a photo of the number: "{}".']

TEMPLATES: dict[str, list[str]] = {
    "Cars": ["a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!",
             "a photo of my dirty {}.", "a photo of my clean {}.", "a photo of my new {}.", "a photo of my old {}."],
    "DTD": [f"a photo of {article} {{}} {thing}." for article in ("a", "the")
            for thing in ("texture", "pattern", "thing", "object")],
    "EuroSAT": ["a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                "a centered satellite photo of the {}."],
    "GTSRB": ['a zoomed in photo of a "{}" traffic sign.', 'a centered photo of a "{}" traffic sign.',
              'a close up photo of a "{}" traffic sign.'],
    "MNIST": _NUMBER,
    "RESISC45": [f"{source} {kind} of {article}{{}}." for article in ("", "a ", "the ")
                 for source, kind in [("satellite", "imagery"), ("aerial", "imagery"), ("satellite", "photo"),
                                      ("aerial", "photo"), ("satellite", "view"), ("aerial", "view")]],
    "SUN397": _PHOTO_OF_A_THE,
    "SVHN": _NUMBER,
    "Flowers102": ["a photo of a {}, a type of flower."],
    "PCAM": ["this is a photo of {}"],
    "FER2013": ["a photo of a {} looking face.", "a photo of a face showing the emotion: {}.",
                "a photo of a face looking {}.", "a face that looks {}.", "they look {}.", "look at how {} they are."],
    "OxfordIIITPet": ["a photo of a {}, a type of pet."],
    "STL10": _PHOTO_OF_A_THE,
    "CIFAR100": _CIFAR,
    "CIFAR10": _CIFAR,
    "Food101": ["a photo of {}, a type of food."],
    "FashionMNIST": _PHOTO_OF_A_THE,
    "EMNIST": ['a photo of the digit character: "{}".'],
    "KMNIST": ["a photo of the character {}."],
    "RenderedSST2": ["a {} review of a movie."],
}

DIGITS = [str(i) for i in range(10)]

# OpenAI CLIP's descriptive GTSRB names, in class-id order (task_vectors src/datasets/gtsrb.py).
GTSRB = [f"red and white circle {v} kph speed limit" for v in (20, 30, 50, 60, 70, 80)] + [
    "end / de-restriction of 80 kph speed limit",
    "red and white circle 100 kph speed limit",
    "red and white circle 120 kph speed limit",
    "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing",
    "red and white triangle road intersection warning",
    "white and yellow diamond priority road",
    "red and white upside down triangle yield right-of-way",
    "stop",
    "empty red and white circle",
    "red and white circle no truck entry",
    "red circle with white horizonal stripe no entry",
    "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning",
    "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning",
    "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning",
    "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning",
    "red and white triangle with deer warning",
    "white circle with gray strike bar no speed limit",
    "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory",
    "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory",
    "blue circle with white keep right arrow mandatory",
    "blue circle with white keep left arrow mandatory",
    "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended",
]

# Label order = the sorted folder names of NWPU-RESISC45; task_vectors replaces '_' with ' '.
RESISC45 = [c.replace("_", " ") for c in (
    "airplane airport baseball_diamond basketball_court beach bridge chaparral church circular_farmland cloud "
    "commercial_area dense_residential desert forest freeway golf_course ground_track_field harbor "
    "industrial_area intersection island lake meadow medium_residential mobile_home_park mountain overpass palace "
    "parking_lot railway railway_station rectangular_farmland river roundabout runway sea_ice ship snowberg "
    "sparse_residential stadium storage_tank tennis_court terrace thermal_power_station wetland").split()]

# task_vectors' EuroSAT: folder name -> split CamelCase -> "+ area" after "...al" -> OpenAI CLIP's wording.
_EUROSAT_OPENAI = {
    "annual crop": "annual crop land", "forest": "forest", "herbaceous vegetation": "brushland or shrubland",
    "highway": "highway or road", "industrial area": "industrial buildings or commercial buildings",
    "pasture": "pasture land", "permanent crop": "permanent crop land",
    "residential area": "residential buildings or homes or apartments", "river": "river", "sea lake": "lake or sea",
}


# The ten names in label order (the sorted folder names), as FusionBench lists them for its Hugging Face copy.
EUROSAT = list(_EUROSAT_OPENAI.values())


def eurosat_classname(folder: str) -> str:
    words = " ".join(w.lower() for w in re.findall(r"[A-Z](?:[a-z]+|[A-Z]*(?=[A-Z]|$))", folder.replace("_", " ")))
    if words.endswith("al"):
        words += " area"
    if words not in _EUROSAT_OPENAI:
        raise KeyError(f"EuroSAT class folder '{folder}' is not one of the 10 EuroSAT classes "
                       "(AnnualCrop, Forest, HerbaceousVegetation, Highway, Industrial, Pasture, PermanentCrop, "
                       "Residential, River, SeaLake)")
    return _EUROSAT_OPENAI[words]


def sun397_classname(folder: str) -> str:
    """SUN397 folders carry a 2-character prefix ('a_abbey'); task_vectors strips it and turns '_' into spaces."""
    return folder[2:].replace("_", " ")


FLOWERS102 = [
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold", "tiger lily",
    "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot", "king protea",
    "spear thistle", "yellow iris", "globe-flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger", "grape hyacinth",
    "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke", "sweet william", "carnation",
    "garden phlox", "love in the mist", "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower",
    "great masterwort", "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia",
    "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion", "petunia",
    "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura", "geranium", "orange dahlia",
    "pink-yellow dahlia?", "cautleya spicata", "japanese anemone", "black-eyed susan", "silverbush",
    "californian poppy", "osteospermum", "spring crocus", "bearded iris", "windflower", "tree poppy", "gazania",
    "azalea", "water lily", "rose", "thorn apple", "morning glory", "passion flower", "lotus", "toad lily",
    "anthurium", "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss", "foxglove", "bougainvillea",
    "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper", "blackberry lily",
]
PCAM = ["lymph node", "lymph node containing metastatic tumor tissue"]
FER2013 = ["angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]
OXFORD_PET = (
    "abyssinian american_bulldog american_pit_bull_terrier basset_hound beagle bengal birman bombay boxer "
    "british_shorthair chihuahua egyptian_mau english_cocker_spaniel english_setter german_shorthaired "
    "great_pyrenees havanese japanese_chin keeshond leonberger maine_coon miniature_pinscher newfoundland persian "
    "pomeranian pug ragdoll russian_blue saint_bernard samoyed scottish_terrier shiba_inu siamese sphynx "
    "staffordshire_bull_terrier wheaten_terrier yorkshire_terrier").split()
STL10 = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch cra crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
# Label order = the sorted folder names of Food-101's meta files, with '_' -> ' '.
FOOD101 = [c.replace("_", " ") for c in (
    "apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap bread_pudding "
    "breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake ceviche cheese_plate cheesecake "
    "chicken_curry chicken_quesadilla chicken_wings chocolate_cake chocolate_mousse churros clam_chowder "
    "club_sandwich crab_cakes creme_brulee croque_madame cup_cakes deviled_eggs donuts dumplings edamame "
    "eggs_benedict escargots falafel filet_mignon fish_and_chips foie_gras french_fries french_onion_soup "
    "french_toast fried_calamari fried_rice frozen_yogurt garlic_bread gnocchi greek_salad grilled_cheese_sandwich "
    "grilled_salmon guacamole gyoza hamburger hot_and_sour_soup hot_dog huevos_rancheros hummus ice_cream lasagna "
    "lobster_bisque lobster_roll_sandwich macaroni_and_cheese macarons miso_soup mussels nachos omelette "
    "onion_rings oysters pad_thai paella pancakes panna_cotta peking_duck pho pizza pork_chop poutine prime_rib "
    "pulled_pork_sandwich ramen ravioli red_velvet_cake risotto samosa sashimi scallops seaweed_salad "
    "shrimp_and_grits spaghetti_bolognese spaghetti_carbonara spring_rolls steak strawberry_shortcake sushi tacos "
    "takoyaki tiramisu tuna_tartare waffles").split()]
FASHION_MNIST = ["T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]
EMNIST_LETTERS = [chr(ord("A") + i) for i in range(26)]
KMNIST = ["お", "き", "す", "つ", "な", "は", "ま", "や", "れ", "を"]
RENDERED_SST2 = ["negative", "positive"]
