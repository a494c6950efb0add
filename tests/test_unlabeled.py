"""Unlabeled test images (the challenge's test split): listing, ids, categories, config rewrite."""
import json

import numpy as np
import pytest
from PIL import Image


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(folder / n)


@pytest.fixture
def dataset_cls(registered):
    from projects.allinone.datasets import UnlabeledImageDataset
    return UnlabeledImageDataset


def test_folder_is_listed_sorted_with_ids_from_one(tmp_path, dataset_cls):
    _images(tmp_path / 'test', ['b.jpg', 'a.png', 'c.jpg'])
    (tmp_path / 'test' / 'notes.txt').write_text('not an image')
    ds = dataset_cls(data_root=str(tmp_path), data_prefix=dict(img='test/'), metainfo=dict(classes=('x', 'y')))
    assert [d['img_path'].rsplit('/', 1)[1] for d in ds] == ['a.png', 'b.jpg', 'c.jpg']
    assert [d['img_id'] for d in ds] == [1, 2, 3]
    assert ds.cat_ids == [1, 2]


def test_text_list_gives_order_and_ignores_a_label_column(tmp_path, dataset_cls):
    _images(tmp_path / 'test', ['a.jpg', 'b.jpg'])
    (tmp_path / 'test.txt').write_text('b.jpg 3\n\na.jpg\n')
    ds = dataset_cls(data_root=str(tmp_path), data_prefix=dict(img='test/'), ann_file='test.txt')
    assert [d['img_path'].rsplit('/', 1)[1] for d in ds] == ['b.jpg', 'a.jpg']


def test_missing_listed_image_names_the_file_and_line(tmp_path, dataset_cls):
    from projects.allinone.datasets import BadInputError
    _images(tmp_path / 'test', ['a.jpg'])
    (tmp_path / 'test.txt').write_text('a.jpg\nghost.jpg\n')
    with pytest.raises(BadInputError, match=r'test\.txt, line 2: image .*ghost\.jpg does not exist'):
        dataset_cls(data_root=str(tmp_path), data_prefix=dict(img='test/'), ann_file='test.txt')


def test_empty_folder_and_missing_folder_are_errors(tmp_path, dataset_cls):
    from projects.allinone.datasets import BadInputError
    (tmp_path / 'empty').mkdir()
    with pytest.raises(BadInputError, match='no images listed'):
        dataset_cls(data_root=str(tmp_path), data_prefix=dict(img='empty/'))
    with pytest.raises(FileNotFoundError, match='nowhere'):
        dataset_cls(data_root=str(tmp_path), data_prefix=dict(img='nowhere/'))


def test_coco_json_gives_image_ids_and_category_ids(tmp_path, dataset_cls):
    from projects.allinone.datasets import BadInputError
    _images(tmp_path / 'test', ['p.jpg', 'q.jpg'])
    content = dict(images=[dict(id=9001, file_name='q.jpg'), dict(id=17, file_name='p.jpg')],
                   categories=[dict(id=40, name='pn'), dict(id=3, name='i2')])
    (tmp_path / 'test.json').write_text(json.dumps(content))
    ds = dataset_cls(data_root=str(tmp_path), data_prefix=dict(img='test/'), ann_file='test.json',
                     metainfo=dict(classes=('i2', 'pn')))
    assert [d['img_id'] for d in ds] == [9001, 17]
    assert ds.cat_ids == [3, 40]  # class order of the config, ids of the file
    with pytest.raises(BadInputError, match=r"categories has no class\(es\) \['w57'\]"):
        dataset_cls(data_root=str(tmp_path), data_prefix=dict(img='test/'), ann_file='test.json',
                    metainfo=dict(classes=('i2', 'w57')))
    bad = dict(images=[dict(file_name='p.jpg')])
    (tmp_path / 'bad.json').write_text(json.dumps(bad))
    with pytest.raises(BadInputError, match=r'bad\.json: images\[0\] needs "id"'):
        dataset_cls(data_root=str(tmp_path), data_prefix=dict(img='test/'), ann_file='bad.json')


def test_categories_file_maps_ids_when_the_list_has_none(tmp_path, dataset_cls):
    _images(tmp_path / 'test', ['p.jpg'])
    (tmp_path / 'train.json').write_text(json.dumps(dict(images=[], categories=[
        dict(id=7, name='a'), dict(id=5, name='b')])))
    ds = dataset_cls(data_root=str(tmp_path), data_prefix=dict(img='test/'), metainfo=dict(classes=('b', 'a')),
                     categories_file=str(tmp_path / 'train.json'))
    assert ds.cat_ids == [5, 7]


def test_config_rewrite_drops_label_loading_and_scoring(demo_cfg, demo_data):
    from projects.allinone.utils import use_unlabeled_images
    use_unlabeled_images(demo_cfg, 'dec', f'{demo_data}/dec/val')  # the challenge's key names the det task
    use_unlabeled_images(demo_cfg, 'seg', f'{demo_data}/seg/images/val')
    for task, scope in (('det', 'mmdet'), ('seg', 'mmseg')):
        ds = demo_cfg.test_dataloader[task].dataset
        assert ds.type == 'UnlabeledImageDataset' and ds['_scope_'] == scope
        assert all(t['type'] != 'LoadAnnotations' for t in ds.pipeline)
        assert demo_cfg.test_evaluator[task] is None
    # detection ids come from the task's labeled annotation file
    assert demo_cfg.test_dataloader.det.dataset.categories_file.endswith('dec/val.json')
    assert demo_cfg.test_evaluator.cls is not None  # untouched tasks are still scored
    with pytest.raises(KeyError, match=r"no task 'depth'; its tasks are det \(file key dec\), seg, cls"):
        use_unlabeled_images(demo_cfg, 'depth', f'{demo_data}/dec/val')
    with pytest.raises(FileNotFoundError, match='not a folder'):
        use_unlabeled_images(demo_cfg, 'cls', f'{demo_data}/cls/nowhere')
