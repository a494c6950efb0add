from .data_check import check_data, missing_data

__all__ = ['check_data', 'missing_data']
