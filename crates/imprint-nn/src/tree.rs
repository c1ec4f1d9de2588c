//! The parameter tree. Every layer declares its tensors once, each a [`Var`] with a name, a
//! logical shape and a [`Kind`]; composite modules list their children by name. Everything else
//! follows from that one declaration: the tensors an optimizer trains, checkpoint names scoped by
//! the module tree (`encoder.layer1.0.conv1.weight`), loading with shape checks, and counting.

use crate::checkpoint::NamedTensor;
use crate::{NnError, Result, Vector};
use dfdx::prelude::*;
use std::collections::BTreeMap;

/// What a tensor is to training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Trained by the optimizer.
    Param,
    /// State that training updates by other means (batch norm's running statistics): saved and
    /// loaded with the weights, never handed to an optimizer.
    Buffer,
}

/// One tensor of a module: its values, stored flat, with the shape checkpoints give it.
#[derive(Clone, Debug)]
pub struct Var<D: Storage<f32>> {
    pub value: Vector<D>,
    pub shape: Vec<usize>,
    pub kind: Kind,
}

impl<D: Storage<f32> + TensorFromVec<f32>> Var<D> {
    pub fn new(dev: &D, values: Vec<f32>, shape: &[usize], kind: Kind) -> Self {
        assert_eq!(
            values.len(),
            shape.iter().product::<usize>(),
            "values for shape {shape:?}"
        );
        let len = values.len();
        Self {
            value: dev.tensor_from_vec(values, (len,)),
            shape: shape.to_vec(),
            kind,
        }
    }

    /// Replaces the values, keeping shape and kind; `values` must have as many elements.
    pub fn set(&mut self, values: Vec<f32>) {
        assert_eq!(values.len(), self.len(), "values for {:?}", self.shape);
        self.value = self.value.device().tensor_from_vec(values, (self.len(),));
    }
}

impl<D: Storage<f32>> Var<D> {
    pub fn len(&self) -> usize {
        self.value.shape().0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A module's tensors, visited in a fixed order with their full names. Implemented by [`Var`]
/// itself (the leaves), `Option`, `Vec` (children named by index, as in PyTorch's
/// `nn.Sequential`), and by each layer or model through [`params!`](crate::params).
pub trait Params<D: Storage<f32>> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>));
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>));
}

impl<D: Storage<f32>> Params<D> for Var<D> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>)) {
        f(prefix, self)
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>)) {
        f(prefix, self)
    }
}

impl<D: Storage<f32>, P: Params<D>> Params<D> for Option<P> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>)) {
        if let Some(p) = self {
            p.visit(prefix, f)
        }
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>)) {
        if let Some(p) = self {
            p.visit_mut(prefix, f)
        }
    }
}

impl<D: Storage<f32>, P: Params<D>> Params<D> for Vec<P> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>)) {
        for (i, p) in self.iter().enumerate() {
            p.visit(&join(prefix, &i.to_string()), f)
        }
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>)) {
        for (i, p) in self.iter_mut().enumerate() {
            p.visit_mut(&join(prefix, &i.to_string()), f)
        }
    }
}

impl<D: Storage<f32>, P: Params<D>> Params<D> for Box<P> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>)) {
        (**self).visit(prefix, f)
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>)) {
        (**self).visit_mut(prefix, f)
    }
}

/// Declares a struct's tensors and children by field name, in order:
/// `params!(Linear { weight, bias });` names them `prefix.weight`, `prefix.bias`. A field may
/// take another name (`head as "rotation"`), or none (`net as _`: its tensors keep the prefix
/// itself, for a wrapper that adds no scope).
#[macro_export]
macro_rules! params {
    ($ty:ident { $($field:ident $(as $name:tt)?),* $(,)? }) => {
        impl<D: $crate::ImprintDevice> $crate::tree::Params<D> for $ty<D> {
            fn visit<'a>(
                &'a self,
                prefix: &str,
                f: &mut dyn FnMut(&str, &'a $crate::tree::Var<D>),
            ) {
                $( $crate::tree::Params::visit(
                    &self.$field, &$crate::params!(@at prefix $field $($name)?), f); )*
            }
            fn visit_mut<'a>(
                &'a mut self,
                prefix: &str,
                f: &mut dyn FnMut(&str, &'a mut $crate::tree::Var<D>),
            ) {
                $( $crate::tree::Params::visit_mut(
                    &mut self.$field, &$crate::params!(@at prefix $field $($name)?), f); )*
            }
        }
    };
    (@at $prefix:ident $field:ident) => { $crate::tree::join($prefix, stringify!($field)) };
    (@at $prefix:ident $field:ident _) => { $prefix.to_string() };
    (@at $prefix:ident $field:ident $name:literal) => { $crate::tree::join($prefix, $name) };
}

/// What follows from [`Params`]; implemented for every module.
pub trait ParamsExt<D: Storage<f32>>: Params<D> {
    /// Every tensor with its full name, in visiting order.
    fn vars(&self, prefix: &str) -> Vec<(String, &Var<D>)> {
        let mut out = Vec::new();
        self.visit(prefix, &mut |name, v| out.push((name.to_string(), v)));
        out
    }

    fn vars_mut(&mut self, prefix: &str) -> Vec<(String, &mut Var<D>)> {
        let mut out = Vec::new();
        self.visit_mut(prefix, &mut |name, v| out.push((name.to_string(), v)));
        out
    }

    /// The tensors an optimizer trains, with their names, in visiting order.
    fn trainable_mut(&mut self, prefix: &str) -> Vec<(String, &mut Vector<D>)> {
        let mut out = Vec::new();
        self.visit_mut(prefix, &mut |name, v| {
            if v.kind == Kind::Param {
                out.push((name.to_string(), &mut v.value))
            }
        });
        out
    }

    /// Batch norm's running statistics (`*.running_mean`, `*.running_var`), which training
    /// moves towards each batch's rather than through the optimizer.
    fn batch_norm_statistics_mut(&mut self) -> Vec<&mut Vector<D>> {
        let mut out = Vec::new();
        self.visit_mut("", &mut |name, v| {
            let running = name.ends_with("running_mean") || name.ends_with("running_var");
            if v.kind == Kind::Buffer && running {
                out.push(&mut v.value)
            }
        });
        out
    }

    /// Number of trainable values.
    fn param_count(&self) -> usize {
        let mut n = 0;
        self.visit("", &mut |_, v| {
            if v.kind == Kind::Param {
                n += v.len()
            }
        });
        n
    }

    /// Every tensor on the host, named and shaped for a checkpoint.
    fn named_tensors(&self, prefix: &str) -> Vec<NamedTensor>
    where
        D: Device<f32>,
    {
        self.vars(prefix)
            .into_iter()
            .map(|(name, v)| NamedTensor {
                name,
                shape: v.shape.clone(),
                data: v.value.as_vec(),
            })
            .collect()
    }

    /// Copies every tensor of this module from `tensors`, refusing a missing tensor or another
    /// shape by name; `source` names the checkpoint in errors. Tensors the module lacks are
    /// left alone (a classifier's checkpoint loads into its encoder).
    fn load_named(
        &mut self,
        prefix: &str,
        tensors: &BTreeMap<String, NamedTensor>,
        source: &str,
    ) -> Result<()>
    where
        D: Device<f32>,
    {
        for (name, v) in self.vars_mut(prefix) {
            let t = tensors.get(&name).ok_or_else(|| NnError::Checkpoint {
                path: source.to_string(),
                message: format!("missing tensor `{name}` (architecture mismatch)"),
            })?;
            if t.shape != v.shape {
                return Err(NnError::Checkpoint {
                    path: source.to_string(),
                    message: format!(
                        "tensor `{name}` has shape {:?}, the model needs {:?} (architecture mismatch)",
                        t.shape, v.shape
                    ),
                });
            }
            v.value.copy_from(&t.data);
        }
        Ok(())
    }
}

impl<D: Storage<f32>, P: Params<D> + ?Sized> ParamsExt<D> for P {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImprintDevice;

    #[derive(Clone, Debug)]
    struct Leafy<D: ImprintDevice> {
        weight: Var<D>,
        stats: Var<D>,
    }
    params!(Leafy { weight, stats });

    #[derive(Clone, Debug)]
    struct Tree<D: ImprintDevice> {
        first: Leafy<D>,
        rest: Vec<Leafy<D>>,
        extra: Option<Var<D>>,
    }
    params!(Tree { first, rest, extra });

    fn leafy(dev: &Cpu, base: f32) -> Leafy<Cpu> {
        Leafy {
            weight: Var::new(dev, vec![base, base + 1.0], &[1, 2], Kind::Param),
            stats: Var::new(dev, vec![base * 10.0], &[1], Kind::Buffer),
        }
    }

    fn tree(dev: &Cpu, base: f32) -> Tree<Cpu> {
        Tree {
            first: leafy(dev, base),
            rest: vec![leafy(dev, base + 2.0), leafy(dev, base + 4.0)],
            extra: None,
        }
    }

    #[test]
    fn names_follow_fields_and_indices() {
        let dev = Cpu::default();
        let t = tree(&dev, 0.0);
        let names: Vec<String> = t.vars("m").into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "m.first.weight",
                "m.first.stats",
                "m.rest.0.weight",
                "m.rest.0.stats",
                "m.rest.1.weight",
                "m.rest.1.stats"
            ]
        );
        assert_eq!(t.param_count(), 6, "buffers are not counted");
        let mut t = t;
        let trained: Vec<String> = t.trainable_mut("").into_iter().map(|(n, _)| n).collect();
        assert_eq!(trained, ["first.weight", "rest.0.weight", "rest.1.weight"]);
    }

    #[test]
    fn save_then_load_restores_params_and_buffers_and_refuses_misfits() {
        let dev = Cpu::default();
        let saved: BTreeMap<String, NamedTensor> = tree(&dev, 1.0)
            .named_tensors("m")
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut other = tree(&dev, 7.0);
        assert_ne!(other.named_tensors("m"), tree(&dev, 1.0).named_tensors("m"));
        other.load_named("m", &saved, "x.safetensors").unwrap();
        assert_eq!(other.named_tensors("m"), tree(&dev, 1.0).named_tensors("m"));

        let mut missing = saved.clone();
        missing.remove("m.rest.1.stats");
        let e = other
            .load_named("m", &missing, "x.safetensors")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.safetensors: missing tensor `m.rest.1.stats` (architecture mismatch)"
        );
        let mut reshaped = saved;
        reshaped.get_mut("m.first.weight").unwrap().shape = vec![2, 1];
        let e = other
            .load_named("m", &reshaped, "x.safetensors")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("tensor `m.first.weight` has shape [2, 1], the model needs [1, 2]"),
            "{e}"
        );
    }
}
